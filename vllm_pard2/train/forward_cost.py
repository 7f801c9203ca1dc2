"""Forward cost of a drafter against its target on this CPU (plain PyTorch, one thread).

    python -m vllm_pard2.train.forward_cost --target T --draft D [--k 8]

A PARD drafter pays when one draft forward (the last token plus k-1 masks: k
rows) costs a small share of one target decode step (1 row). Both are timed as
a bare forward of that many tokens (median of repeats, after warm-up); the
recipe records the ratio next to the pair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


@torch.no_grad()
def forward_ms(model_dir: str, num_tokens: int, repeats: int = 50) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(4, model.config.vocab_size, (1, num_tokens))
    for _ in range(5):
        model(input_ids=ids)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(input_ids=ids)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def measure(target_dir: str, draft_dir: str, k: int = 8) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target_ms, draft_ms = forward_ms(target_dir, 1), forward_ms(draft_dir, k)
    finally:
        torch.set_num_threads(threads)
    return {
        "target_decode_ms": round(target_ms, 3),
        "draft_forward_ms": round(draft_ms, 3),
        "draft_rows": k,
        "draft_over_target": round(draft_ms / target_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("-k", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(measure(args.target, args.draft, args.k), indent=2))


if __name__ == "__main__":
    main()
