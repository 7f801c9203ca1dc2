"""How sure a target is of its own text: mean top-1 probability on its greedy continuations.

    python -m vllm_pard2.train.confidence --target T [--num-prompts 30] [--max-tokens 128]

PARD-2's CAT weights are products of the target's token probabilities, so a
target that is unsure of its own greedy text (top-1 p well below 0.5) starves
the deep mask blocks of loss weight. The recipe records this number after
training the target; prompts are cut from held-out standard-library files.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sysconfig
import zlib
from pathlib import Path

import torch

HELD_OUT_MODULUS = 10  # a file is held out when crc32(relative path) % 10 == 0


def stdlib_files(held_out: bool) -> list[Path]:
    """Every stdlib .py file (subpackages and tests included), split deterministically by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return [p for p in files if (zlib.crc32(str(p.relative_to(root)).encode()) % HELD_OUT_MODULUS == 0) == held_out]


def held_out_prompts(tokenizer, num_prompts: int, prompt_tokens: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    files = [p.read_text(encoding="utf-8", errors="ignore").splitlines(keepends=True) for p in stdlib_files(True)]
    files = [lines for lines in files if len(lines) > 20]
    prompts = []
    for lines in rng.sample(files, min(num_prompts, len(files))):
        start = rng.randrange(len(lines) - 12)
        ids = tokenizer("".join(lines[start : start + 12]), add_special_tokens=False)["input_ids"]
        prompts.append(ids[:prompt_tokens])
    return prompts


@torch.no_grad()
def measure(target_dir: str, num_prompts: int = 30, max_tokens: int = 128, prompt_tokens: int = 32) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    top1: list[float] = []
    for ids in held_out_prompts(tokenizer, num_prompts, prompt_tokens):
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        top1 += [torch.softmax(logits[0].float(), -1).max().item() for logits in out.logits]
    return {
        "mean_top1_prob": round(statistics.mean(top1), 4),
        "share_below_0_5": round(sum(p < 0.5 for p in top1) / len(top1), 4),
        "positions": len(top1),
        "prompts": num_prompts,
        "max_tokens": max_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--num-prompts", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the result here (JSON)")
    args = parser.parse_args()
    result = measure(args.target, args.num_prompts, args.max_tokens)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
