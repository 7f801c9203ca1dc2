"""``python -m benchmarks.interleaved``: speed ratios on a drifting machine, engines side by side.

``benchmarks.run`` measures one method's engine after the other; on a shared
CPU whose speed drifts by tens of percent over minutes, a few-percent question
(is a k = 0 step as cheap as plain decoding? is adaptive k within 5 % of the
best static k?) drowns in that drift. Here every engine is started first, then
they take turns: request by request for batch 1, batch by batch for larger
batches, the order rotated by one engine per batch (an engine that ran twice in
a row, its weights still in cache, measured up to 7 % faster than one that
never did: 2026-12-06, six engines, the order reversed per request). A round is one pass over
the prompts; the ratio to no speculation is taken per round, and the median
over rounds is reported, with every engine's outputs checked token-identical
to no speculation. Prompts are the main job's (``examples/offline_pard2.py``).

    python -m benchmarks.interleaved --mode none,pard2,pard2_static:0,pard2_static:2,pard2_static:4

With ``--recipe-dir OUT`` (a ``python -m vllm_pard2.train.recipe_tiny OUT``
directory) the target is ``OUT/target`` and each method drafts with the drafter
its recipe stage trained for it: ``ar`` with ``OUT/draft_ar``, ``pard`` (vLLM's
in-tree PARD) with ``OUT/draft_pard``, ``pard2``/``pard2_static`` with
``OUT/draft_pard2``. That is the speed-up ordering of the three objectives on
one target (issue "Draft quality"):

    python -m benchmarks.interleaved --recipe-dir OUT --mode none,ar:4,pard:4,pard2_static:4 --batch-sizes 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.inprocess import shutdown_engine, speculative_config, start_engine
from benchmarks.run import _int_list, _methods

# The recipe_tiny stage that trained each method's drafter (``--recipe-dir``).
RECIPE_DRAFTERS = {"ar": "draft_ar", "pard": "draft_pard", "pard2": "draft_pard2", "pard2_static": "draft_pard2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.interleaved", description=__doc__.splitlines()[0])
    p.add_argument("--mode", action="append", required=True, metavar="M[:K],...",
                   help="methods as in benchmarks.run; must include none (the baseline)")  # fmt: skip
    p.add_argument("-k", dest="k", type=int, default=8, help="drafts per step (default %(default)s)")
    p.add_argument("--batch-sizes", default="1,16", help="default %(default)s")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--tokens", dest="max_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--recipe-dir", type=Path, help="target and per-objective drafters of a recipe_tiny run")
    args = p.parse_args(argv)
    args.server, args.para = None, True  # what benchmarks.run's mode parser reads
    args.methods = _methods(args, p)
    if "none" not in {m.name for m in args.methods}:
        p.error("--mode must include none: ratios are to no speculation")
    args.batch_sizes = _int_list(args.batch_sizes, "--batch-sizes", p)
    if min(args.num_prompts, args.max_tokens, args.rounds) < 1:
        p.error("--num-prompts, --tokens and --rounds must be positive")
    if args.recipe_dir is not None:
        needed = {"target"} | {RECIPE_DRAFTERS[m.name] for m in args.methods if m.name in RECIPE_DRAFTERS}
        missing = sorted(n for n in needed if not (args.recipe_dir / n / "config.json").is_file())
        if missing:
            p.error(f"--recipe-dir {args.recipe_dir} lacks {', '.join(missing)} (run recipe_tiny there first)")
    return args


def models(recipe_dir: Path | None, method_name: str, embedded: tuple[str, str]) -> tuple[str, str]:
    """(target, drafter) of one method: the embedded pair, or the recipe's drafter for its objective."""
    if recipe_dir is None:
        return embedded
    return str(recipe_dir / "target"), str(recipe_dir / RECIPE_DRAFTERS.get(method_name, "draft_pard2"))


def turn_order(names: list[str], turn: int) -> list[str]:
    """The engines' order for one batch: rotated by one per batch, so no engine ever
    runs twice in a row (with caches still warm from its own last batch) and every
    engine takes every place in turn; two engines simply alternate."""
    if len(names) <= 2:
        return names
    shift = turn % len(names)
    return names[shift:] + names[:shift]


def time_round(engines: dict[str, Any], batches: list[list[str]], params: Any, round_index: int) -> dict[str, Any]:
    """One pass over ``batches`` with the engines taking turns; per engine its seconds and outputs."""
    seconds = dict.fromkeys(engines, 0.0)
    outputs: dict[str, list[list[int]]] = {name: [] for name in engines}
    names = list(engines)
    for i, batch in enumerate(batches):
        for name in turn_order(names, i + round_index * len(batches)):
            started = time.perf_counter()
            results = engines[name].generate(batch, params, use_tqdm=False)
            seconds[name] += time.perf_counter() - started
            outputs[name] += [list(r.outputs[0].token_ids) for r in results]
    return {"seconds": seconds, "outputs": outputs}


def summarize(rounds: list[dict[str, Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per engine: median and pooled speed ratio to ``baseline``, seconds per round, losslessness."""
    summary = {}
    for name in rounds[0]["seconds"]:
        base = [r["seconds"][baseline] for r in rounds]
        own = [r["seconds"][name] for r in rounds]
        summary[name] = {
            "median_ratio_vs_none": statistics.median(b / o for b, o in zip(base, own, strict=True)),
            "pooled_ratio_vs_none": sum(base) / sum(own),
            "seconds_per_round": own,
            "identical_to_none": all(r["outputs"][name] == r["outputs"][baseline] for r in rounds),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vllm import SamplingParams

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from offline_pard2 import ENGINE_KWARGS, embedded_pair, make_prompts  # the main job's engine settings

    # start_engine sets disable_log_stats itself
    engine_kwargs = {key: value for key, value in ENGINE_KWARGS.items() if key != "disable_log_stats"}
    embedded = embedded_pair()
    prompts = make_prompts(args.num_prompts)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    labels = {m.label: m for m in args.methods}
    baseline = next(label for label, m in labels.items() if m.name == "none")
    engines: dict[str, Any] = {}
    try:
        drafters = {}
        for label, method in labels.items():
            target, drafters[label] = models(args.recipe_dir, method.name, embedded)
            spec = speculative_config(method, drafters[label], None, None, args.k)
            engines[label] = start_engine(target, spec, engine_kwargs)
            engines[label].generate(prompts[:1], params, use_tqdm=False)  # warm-up, not timed
        report: dict[str, Any] = {"target": target, "drafters": drafters, "command": sys.argv, "batch_sizes": {}}
        for batch_size in args.batch_sizes:
            batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
            rounds = [time_round(engines, batches, params, r) for r in range(args.rounds)]
            summary = summarize(rounds, baseline)
            report["batch_sizes"][str(batch_size)] = summary
            print(f"\nbatch {batch_size}: {len(prompts)} prompts, {args.max_tokens} tokens, {args.rounds} rounds")
            for label, row in summary.items():
                print(f"  {label:<24} {row['median_ratio_vs_none']:.3f}x median "
                      f"({row['pooled_ratio_vs_none']:.3f}x pooled)  identical: {row['identical_to_none']}")  # fmt: skip
    finally:
        for llm in engines.values():
            shutdown_engine(llm)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
