"""tau after a stretch of k = 0 steps against never skipping, on the embedded pair.

    python benchmarks/catch_up_tau.py target_dependent 6   # mode, length of the k = 0 stretch

Each prompt of the main job runs alone (k = K every step), then beside a
companion request of ``SKIP_STEPS`` tokens under the schedule
``[[1, 1, K], [2, 256, 0]]``: while the companion runs the drafter does not run,
and the first drafting step after it catches the draft KV up. Prints one JSON
line; results and method: benchmarks/RESULTS.md ("Lazy catch-up").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from offline_pard2 import BASE_PROMPTS, ENGINE_KWARGS, embedded_pair  # noqa: E402


def tau_between(after: dict[str, float], before: dict[str, float]) -> float:
    drafts = after["vllm:spec_decode_num_drafts"] - before.get("vllm:spec_decode_num_drafts", 0)
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before.get("vllm:spec_decode_num_accepted_tokens", 0)
    return 1 + accepted / drafts


def counters(llm) -> dict[str, float]:
    return {m.name: m.value for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode_num_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["target_dependent", "target_independent"])
    parser.add_argument("skip_steps", type=int, nargs="?", default=6)
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=120)
    args = parser.parse_args()

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    target, draft = embedded_pair()
    tok = AutoTokenizer.from_pretrained(target)
    prompts = [{"prompt_token_ids": tok(p)["input_ids"]} for p in BASE_PROMPTS]
    spec = {
        "method": "pard2",
        "model": draft,
        "num_speculative_tokens": args.k,
        "pard2_mode": args.mode,
        "num_speculative_tokens_per_batch_size": [[1, 1, args.k], [2, 256, 0]],
    }
    llm = LLM(model=target, speculative_config=spec, enable_prefix_caching=False, **ENGINE_KWARGS)
    long = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    companion = SamplingParams(temperature=0, max_tokens=args.skip_steps, ignore_eos=True)
    c0 = counters(llm)
    alone = [llm.generate([p], long, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    c1 = counters(llm)
    resumed = [
        llm.generate([p, prompts[(i + 1) % len(prompts)]], [long, companion], use_tqdm=False)[0].outputs[0].token_ids
        for i, p in enumerate(prompts)
    ]
    c2 = counters(llm)
    result = {
        "mode": args.mode,
        "k": args.k,
        "skip_steps": args.skip_steps,
        "identical": alone == resumed,
        "tau_never_skip": tau_between(c1, c0),
        "tau_after_resume": tau_between(c2, c1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
