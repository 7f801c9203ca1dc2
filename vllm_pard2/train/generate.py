"""Distillation data: the target's own responses to a prompt set, generated with vLLM.

    python -m vllm_pard2.train.generate --target T --prompts prompts.jsonl --out data.jsonl \
        [--max-tokens 128] [--temperature 0] [--kv-cache-mib 256]

Prompt records: ``{"prompt_ids": [...]}`` or ``{"prompt": "..."}`` (raw text, no
chat template) or ``{"messages": [...]}`` (rendered with the tokenizer's chat
template, generation prompt added). Output records carry ``prompt_ids`` and
``response_ids`` (exact token ids, no re-tokenisation) plus the decoded text.
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


def generate(
    target: str,
    prompts_path: str,
    out_path: str,
    max_tokens: int = 128,
    temperature: float = 0.0,
    kv_cache_mib: int = 256,
    max_model_len: int = 512,
    seed: int = 0,
) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(target)
    prompts = read_prompt_ids(prompts_path, tokenizer)
    started = time.perf_counter()
    llm = LLM(
        model=target,
        dtype="float32",
        kv_cache_memory_bytes=kv_cache_mib << 20,
        max_model_len=max_model_len,
        enforce_eager=True,
        seed=seed,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=True)
    num_tokens = 0
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with Path(out_path).open("w", encoding="utf-8") as fh:
        for prompt, output in zip(prompts, outputs, strict=True):
            response = list(output.outputs[0].token_ids)
            num_tokens += len(response)
            record = {
                "prompt_ids": prompt,
                "response_ids": response,
                "prompt": tokenizer.decode(prompt),
                "response": tokenizer.decode(response),
            }
            fh.write(json.dumps(record) + "\n")
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()
    return {"prompts": len(prompts), "response_tokens": num_tokens, "wall_s": round(time.perf_counter() - started, 1)}


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
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
