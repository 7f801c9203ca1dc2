"""Greedy generation without speculation, then with PARD-2: speed, tau, losslessness.

Runs the same prompts through two engines, one after the other (start, time
``generate`` only, shut down), and prints output tokens/s, the mean acceptance
length tau, and whether pard2's outputs are token-identical to the baseline.
Without ``--target``/``--draft`` it uses the embedded tiny pair shipped in the
package (a 2.4M-parameter target and a PARD-2 drafter trained on the Python
standard library by ``python -m vllm_pard2.train.recipe_tiny``), or, with
``--pair-dir``, a random tiny pair built there (only the mechanics are
meaningful then).

    python examples/offline_pard2.py
    python examples/offline_pard2.py --target TARGET --draft PARD_DRAFT -k 8
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Same settings as the test engines: exact float32 greedy, small memory.
ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32",
    "kv_cache_memory_bytes": 64 << 20,
    "max_model_len": 256,
    "enforce_eager": True,
    "seed": 0,
    "disable_log_stats": False,  # keeps the spec-decode counters tau comes from
}
DEFAULT_PAIR_DIR = Path("~/.cache/vllm-pard2/tiny_pair")
BASE_PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n\ndef main():",
    "class Stack:\n    def __init__(self):",
    "def read_lines(path):\n    with open(path) as f:",
    "for i in range(10):\n    if i % 2 == 0:",
    "def is_prime(n: int) -> bool:",
    "import json\n\ndata = json.loads(",
    "def merge_sort(items):\n    if len(items) <= 1:",
    "try:\n    import numpy as np\nexcept ImportError:",
    "class Point:\n    def __init__(self, x, y):",
    "def __repr__(self):\n    return",
    "with open('log.txt', 'w') as f:",
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(",
    "result = []\nfor key, value in sorted(mapping.items()):",
    "def flatten(nested):\n    for item in nested:",
    "if __name__ == '__main__':",
]


@dataclass
class RunResult:
    method: str
    token_ids: list[list[int]]
    seconds: float
    tau: float | None  # None without speculation

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.token_ids)) / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target model (default: tiny built-in pair)")
    parser.add_argument("--draft", help="PARD draft model (default: tiny built-in pair)")
    parser.add_argument(
        "--pair-dir",
        type=Path,
        default=None,
        help=f"use a random tiny pair built here if missing (e.g. {DEFAULT_PAIR_DIR}) instead of the embedded one",
    )
    parser.add_argument("-k", "--num-speculative-tokens", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if (args.target is None) != (args.draft is None):
        parser.error("give both --target and --draft, or neither (tiny built-in pair)")
    if min(args.num_speculative_tokens, args.num_prompts, args.max_tokens) < 1:
        parser.error("-k, --num-prompts and --max-tokens must be positive")
    return args


def embedded_pair() -> tuple[str, str]:
    """The trained tiny target + PARD-2 drafter shipped inside the package."""
    import vllm_pard2

    root = Path(vllm_pard2.__file__).parent / "assets" / "tiny_pard2"
    return str(root / "target"), str(root / "draft")


def tiny_pair(pair_dir: Path) -> tuple[str, str]:
    """Target and draft of the tiny pair under ``pair_dir``, built if missing."""
    pair_dir = pair_dir.expanduser()
    target, draft = pair_dir / "target", pair_dir / "draft_copy"
    if not all((p / "config.json").exists() for p in (target, draft)):
        from vllm_pard2.tiny_pair import build_tiny_pair

        print(f"Building the tiny pair in {pair_dir} ...", flush=True)
        paths = build_tiny_pair(pair_dir)
        target, draft = paths["target"], paths["draft_copy"]
    return str(target), str(draft)


def make_prompts(num_prompts: int) -> list[str]:
    """``num_prompts`` distinct short code prompts (cycled, numbered past the base set)."""
    prompts = []
    for i in range(num_prompts):
        prompt = BASE_PROMPTS[i % len(BASE_PROMPTS)]
        if i >= len(BASE_PROMPTS):
            prompt = f"# example {i}\n{prompt}"
        prompts.append(prompt)
    return prompts


def spec_counters(llm: Any) -> tuple[int, int]:
    """(drafts, accepted draft tokens) so far, summed over engines."""
    drafts = accepted = 0
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            drafts += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens":
            accepted += metric.value
    return drafts, accepted


def run(
    method: str,
    target: str,
    prompts: list[str],
    max_tokens: int,
    speculative_config: dict[str, Any] | None = None,
) -> RunResult:
    """Start an engine, time greedy generation of ``prompts``, shut it down."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=target, speculative_config=speculative_config, **ENGINE_KWARGS)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up, not timed
        drafts_before, accepted_before = spec_counters(llm)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        drafts, accepted = spec_counters(llm)
        drafts -= drafts_before
        accepted -= accepted_before
    finally:
        # Stop the engine processes now, not at exit: the next engine needs the memory.
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    tau = 1 + accepted / drafts if speculative_config and drafts else None
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    return RunResult(method, token_ids, seconds, tau)


def print_table(baseline: RunResult, results: list[RunResult]) -> None:
    header = f"{'method':<10} {'output tok/s':>12} {'tau':>6}  identical to no speculation"
    print(header)
    print("-" * len(header))
    for r in results:
        tau = f"{r.tau:.2f}" if r.tau is not None else "-"
        if r is baseline:
            identical = "(reference)"
        else:
            differ = sum(a != b for a, b in zip(r.token_ids, baseline.token_ids, strict=True))
            identical = "yes" if differ == 0 else f"no ({differ}/{len(r.token_ids)} differ)"
        print(f"{r.method:<10} {r.tokens_per_s:>12.1f} {tau:>6}  {identical}")
    print("tau: mean acceptance length, 1 + accepted / drafts: tokens per request per target step, bonus token counted")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.target is None and args.pair_dir is None:
        target, draft = embedded_pair()
    elif args.target is None:
        target, draft = tiny_pair(args.pair_dir)
    else:
        target, draft = args.target, args.draft
    prompts = make_prompts(args.num_prompts)
    spec = {
        "method": "pard2",
        "model": draft,
        "num_speculative_tokens": args.num_speculative_tokens,
    }
    baseline = run("no-spec", target, prompts, args.max_tokens)
    pard2 = run(f"pard2 k={args.num_speculative_tokens}", target, prompts, args.max_tokens, spec)
    print(f"\n{len(prompts)} prompts, greedy, max_tokens={args.max_tokens}")
    print(f"target: {target}\ndraft:  {draft}\n")
    print_table(baseline, [baseline, pard2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
