"""Distillation data: the target's own responses to a prompt set, generated with vLLM.

    python -m vllm_pard2.train.generate --target T --prompts prompts.jsonl --out data.jsonl \
        [--max-tokens 128] [--temperature 0] [--kv-cache-mib 256] [--chunk 512]

Prompt records: ``{"prompt_ids": [...]}`` or ``{"prompt": "..."}`` (raw text, no
chat template) or ``{"messages": [...]}`` (rendered with the tokenizer's chat
template, generation prompt added). Output records carry ``prompt_ids`` and
``response_ids`` (exact token ids, no re-tokenisation) plus the decoded text
and ``index`` (the prompt's line among the prompt records).

The whole prompt file goes through one engine in chunks of ``--chunk`` prompts
(vLLM batches each chunk continuously), under one progress bar; each chunk is
appended to ``--out`` as soon as it is done. Re-running the same command
resumes after the last complete record (a torn last line is dropped); records
whose prompt differs from the prompt file stop the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path


def read_prompt_ids(path: str | Path, tokenizer) -> list[list[int]]:
    prompts = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            if "prompt_ids" in rec:
                prompts.append(list(rec["prompt_ids"]))
            elif "messages" in rec:
                prompts.append(list(tokenizer.apply_chat_template(rec["messages"], add_generation_prompt=True)))
            elif "prompt" in rec:
                prompts.append(tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"])
            else:
                raise ValueError(f"{path}: a prompt record needs 'prompt_ids', 'prompt' or 'messages'")
    return prompts


def completed_records(out_path: Path, prompts: list[list[int]]) -> int:
    """How many leading prompts ``out_path`` already answers; drops a torn last line."""
    if not out_path.is_file():
        return 0
    lines = out_path.read_text(encoding="utf-8").splitlines(keepends=True)
    good = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # an interrupted write: only ever the last line
        if not line.endswith("\n"):
            break
        good.append(line)
        index = rec.get("index", len(good) - 1)
        if index != len(good) - 1 or index >= len(prompts) or rec["prompt_ids"] != prompts[index]:
            raise ValueError(f"{out_path}: record {len(good)} does not match the prompt file; use another --out")
    if len(good) != len(lines):
        out_path.write_text("".join(good), encoding="utf-8")
    return len(good)


def generate(
    target: str,
    prompts_path: str,
    out_path: str,
    max_tokens: int = 128,
    temperature: float = 0.0,
    kv_cache_mib: int = 256,
    max_model_len: int = 512,
    seed: int = 0,
    chunk: int = 512,
) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    prompts = read_prompt_ids(prompts_path, tokenizer)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = completed_records(out, prompts)
    started = time.perf_counter()
    summary = {"prompts": len(prompts), "resumed_at": done, "response_tokens": 0}
    if done == len(prompts):
        return {**summary, "wall_s": 0.0}
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=target,
        dtype="float32",
        kv_cache_memory_bytes=kv_cache_mib << 20,
        max_model_len=max_model_len,
        enforce_eager=True,
        seed=seed,
    )
    bar = tqdm(total=len(prompts), initial=done, desc="generate", unit="prompt")
    with out.open("a", encoding="utf-8") as fh:
        for start in range(done, len(prompts), chunk):
            batch = prompts[start : start + chunk]
            # a per-prompt seed keeps sampled responses independent of chunking and resumes
            params = [
                SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + start + i)
                for i in range(len(batch))
            ]
            outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
            for i, (prompt, output) in enumerate(zip(batch, outputs, strict=True)):
                response = list(output.outputs[0].token_ids)
                summary["response_tokens"] += len(response)
                record = {
                    "index": start + i,
                    "prompt_ids": prompt,
                    "response_ids": response,
                    "prompt": tokenizer.decode(prompt),
                    "response": tokenizer.decode(response),
                }
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{summary['response_tokens'] / (time.perf_counter() - started):.0f}")
    bar.close()
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()
    return {**summary, "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="target checkpoint directory (with tokenizer)")
    parser.add_argument("--prompts", required=True, help="JSONL prompts")
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=512, help="prompts per engine call (and per resume point)")
    args = parser.parse_args()
    summary = generate(
        args.target,
        args.prompts,
        args.out,
        args.max_tokens,
        args.temperature,
        args.kv_cache_mib,
        args.max_model_len,
        args.seed,
        args.chunk,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
