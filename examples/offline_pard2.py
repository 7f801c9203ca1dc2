"""Greedy generation without speculation, then with PARD-2: speed, tau, losslessness.

Starts two engines (no speculation, and pard2 with its defaults: adaptive k up
to ``-k``) and times two workloads on each, alternating for ``--rounds``
rounds: the prompts one request at a time (batch 1), then all at once. For each
it prints the median output tokens/s, the ratio to no speculation, the mean
acceptance length tau, and whether pard2's outputs are token-identical to the
baseline.
Without ``--target``/``--draft`` it uses the embedded tiny pair shipped in the
package (a 3.9M-parameter, 8-layer target and a 1-layer PARD-2 drafter trained
on the Python standard library by ``python -m vllm_pard2.train.recipe_tiny``), or, with
``--pair-dir``, a random tiny pair built there (only the mechanics are
meaningful then).

    python examples/offline_pard2.py
    python examples/offline_pard2.py --target TARGET --draft PARD_DRAFT -k 8
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
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
    seconds: list[float]  # one timed generate per round
    tau: float | None  # None without speculation

    def rate(self, round_index: int) -> float:
        return sum(map(len, self.token_ids)) / self.seconds[round_index]

    @property
    def tokens_per_s(self) -> float:
        """Median over rounds."""
        return statistics.median(self.rate(i) for i in range(len(self.seconds)))


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
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed generates per engine, alternating between the two (median)"
    )
    args = parser.parse_args(argv)
    if (args.target is None) != (args.draft is None):
        parser.error("give both --target and --draft, or neither (tiny built-in pair)")
    if min(args.num_speculative_tokens, args.num_prompts, args.max_tokens, args.rounds) < 1:
        parser.error("-k, --num-prompts, --max-tokens and --rounds must be positive")
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


def start(target: str, speculative_config: dict[str, Any] | None, prompts: list[str], max_tokens: int) -> Any:
    """Start an engine and warm it up on one prompt (not timed)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=target, speculative_config=speculative_config, **ENGINE_KWARGS)
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return llm


WORKLOADS = ("one at a time", "all at once")


def timed_generate(
    llm: Any, prompts: list[str], max_tokens: int, workload: str
) -> tuple[list[list[int]], float, int, int]:
    """(token ids, seconds, drafts, accepted drafts) of greedy generation of every prompt,
    one ``generate`` per prompt (batch 1) or one for all of them."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    batches = [[p] for p in prompts] if workload == "one at a time" else [prompts]
    drafts_before, accepted_before = spec_counters(llm)
    started = time.perf_counter()
    outputs = [o for batch in batches for o in llm.generate(batch, params, use_tqdm=False)]
    seconds = time.perf_counter() - started
    drafts, accepted = spec_counters(llm)
    return [list(o.outputs[0].token_ids) for o in outputs], seconds, drafts - drafts_before, accepted - accepted_before


def shutdown(llm: Any) -> None:
    """Stop the engine processes now, not at exit."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def compare(
    target: str, spec: dict[str, Any], label: str, prompts: list[str], max_tokens: int, rounds: int
) -> dict[str, tuple[RunResult, RunResult]]:
    """Per workload, (no-spec, pard2). Both engines alive at once, timed in alternation:
    this machine's speed drifts by tens of percent over minutes, so back-to-back rounds
    compare fairly where one engine after the other would not."""
    engines = {"no-spec": start(target, None, prompts, max_tokens)}
    try:
        engines[label] = start(target, spec, prompts, max_tokens)
        results = {w: {name: RunResult(name, [], [], None) for name in engines} for w in WORKLOADS}
        counts = {w: [0, 0] for w in WORKLOADS}  # drafts, accepted
        for _ in range(rounds):
            for workload in WORKLOADS:
                for name, llm in engines.items():
                    token_ids, seconds, new_drafts, new_accepted = timed_generate(llm, prompts, max_tokens, workload)
                    result = results[workload][name]
                    if result.token_ids and token_ids != result.token_ids:
                        raise RuntimeError(f"{name}: greedy outputs changed between rounds")
                    result.token_ids = token_ids
                    result.seconds.append(seconds)
                    if name == label:
                        counts[workload][0] += new_drafts
                        counts[workload][1] += new_accepted
        for workload, (drafts, accepted) in counts.items():
            results[workload][label].tau = 1 + accepted / drafts if drafts else None
        return {w: (results[w]["no-spec"], results[w][label]) for w in WORKLOADS}
    finally:
        for llm in engines.values():
            shutdown(llm)


def print_table(baseline: RunResult, results: list[RunResult]) -> None:
    header = f"{'method':<22} {'output tok/s':>12} {'vs no-spec':>10} {'tau':>6}  identical to no speculation"
    print(header)
    print("-" * len(header))
    for r in results:
        tau = f"{r.tau:.2f}" if r.tau is not None else "-"
        # Median of the per-round ratios: each round's two runs were back to back.
        ratio = statistics.median(r.rate(i) / baseline.rate(i) for i in range(len(r.seconds)))
        if r is baseline:
            identical = "(reference)"
        else:
            differ = sum(a != b for a, b in zip(r.token_ids, baseline.token_ids, strict=True))
            identical = "yes" if differ == 0 else f"no ({differ}/{len(r.token_ids)} differ)"
        print(f"{r.method:<22} {r.tokens_per_s:>12.1f} {ratio:>9.2f}x {tau:>6}  {identical}")
    print("tau: mean acceptance length, 1 + accepted / drafts: tokens per request per target step, bonus token counted")
    print(f"tok/s: median of {len(baseline.seconds)} timed rounds per engine, the two engines alternating")


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
    label = f"pard2 adaptive k<={args.num_speculative_tokens}"
    results = compare(target, spec, label, prompts, args.max_tokens, args.rounds)
    print(f"\ntarget: {target}\ndraft:  {draft}")
    for workload, (baseline, pard2) in results.items():
        batch = "batch 1" if workload == "one at a time" else f"batch {len(prompts)}"
        print(f"\n{len(prompts)} prompts, {workload} ({batch}), greedy, max_tokens={args.max_tokens}")
        print_table(baseline, [baseline, pard2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
