"""τ table: mean acceptance length of each drafter on held-out HumanEval prompts, through vLLM.

    flock /tmp/pard2-engine.lock python benchmarks/tau_table.py --recipe-dir OUT \
        [--rows ar,pard,pard2_ti,pard2_td] [--ks 4,8,16] [--max-tokens 128] [--out benchmarks/results/tau_table]

τ COUNTS THE BONUS TOKEN: τ = 1 + accepted / drafts, where "drafts" is the number of
(request, step) pairs that drafted (vllm:spec_decode_num_drafts) and "accepted" the accepted draft
tokens (vllm:spec_decode_num_accepted_tokens). Greedy, float32, one engine per (row, k).

Rows (``OUT`` = a ``python -m vllm_pard2.train.recipe_tiny OUT`` directory; without
``--recipe-dir`` the shipped pair in vllm_pard2/assets/tiny_pard2 is used, pard2 rows only):
- ``ar``: the AR draft, k sequential draft steps (vLLM's in-tree ``method: draft_model``);
- ``pard``: the PARD-objective drafter through the pard2 plugin;
- ``pard2_ti``: the PARD-2 drafter, ``pard2_mode: target_independent``;
- ``pard2_td``: the PARD-2 drafter, ``pard2_mode: target_dependent``;
- ``pard2_td@ABLATION`` / ``pard2_ti@ABLATION``: a PARD-2 ablation trained by
  ``recipe_tiny --ablations ABLATION`` (``OUT/draft_pard2__ABLATION``).
Every row's greedy output must equal every other row's (speculation is lossless); the JSON
records whether it does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "vllm_pard2" / "assets" / "humaneval_prompts.jsonl"
SHIPPED = REPO / "vllm_pard2" / "assets" / "tiny_pard2"
FIXED_K = {"pard2_adaptive_k": False}  # τ at k drafts every step (adaptive k would pick its own)
ROWS = {
    "ar": ("draft_ar", {"method": "draft_model"}),
    "pard": ("draft_pard", {"method": "pard2", **FIXED_K}),
    "pard2_ti": ("draft_pard2", {"method": "pard2", "pard2_mode": "target_independent", **FIXED_K}),
    "pard2_td": ("draft_pard2", {"method": "pard2", "pard2_mode": "target_dependent", **FIXED_K}),
}
ROW_TITLES = {
    "ar": "AR draft (k sequential steps, in-tree draft_model)",
    "pard": "PARD objective (pard2 plugin)",
    "pard2_ti": "PARD-2, target-independent",
    "pard2_td": "PARD-2, target-dependent",
}


def resolve_row(row: str) -> tuple[str, dict, str] | None:
    """(drafter dir name, speculative_config extra, title) of a row name, or None if unknown."""
    base, _, ablation = row.partition("@")
    if base not in ROWS or (ablation and not base.startswith("pard2_")):
        return None
    draft_name, spec_extra = ROWS[base]
    if not ablation:
        return draft_name, spec_extra, ROW_TITLES[base]
    return f"{draft_name}__{ablation}", spec_extra, f"{ROW_TITLES[base]}, ablation {ablation}"


def load_prompts(limit: int) -> list[str]:
    with PROMPTS.open(encoding="utf-8") as fh:
        return [json.loads(line)["prompt"] for line in fh if line.strip()][:limit]


def spec_counts(llm) -> dict:
    counts: dict = {"per_pos": []}
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            counts["per_pos"] = [float(v) for v in metric.values]
        elif metric.name.startswith("vllm:spec_decode_num_"):
            counts[metric.name.removeprefix("vllm:spec_decode_num_")] = float(metric.value)
    return counts


def run_one(target: Path, draft: Path, spec_extra: dict, k: int, prompts: list[str], args) -> dict:
    from vllm import LLM, SamplingParams

    spec = {**spec_extra, "model": str(draft), "num_speculative_tokens": k}
    started = time.perf_counter()
    llm = LLM(
        model=str(target),
        speculative_config=spec,
        dtype="float32",
        kv_cache_memory_bytes=args.kv_cache_mib << 20,
        max_model_len=args.max_model_len,
        enforce_eager=True,
        seed=0,
        disable_log_stats=False,
    )
    try:
        gen_started = time.perf_counter()
        outputs = llm.generate(prompts, SamplingParams(max_tokens=args.max_tokens, temperature=0.0), use_tqdm=False)
        gen_s = time.perf_counter() - gen_started
        counts = spec_counts(llm)
    finally:
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    drafts = counts.get("drafts", 0.0)
    accepted = counts.get("accepted_tokens", 0.0)
    return {
        "k": k,
        "spec": spec,
        "tau": round(1 + accepted / drafts, 4) if drafts else None,
        "drafts": drafts,
        "draft_tokens": counts.get("draft_tokens", 0.0),
        "accepted_tokens": accepted,
        "acceptance_rate": round(accepted / counts["draft_tokens"], 4) if counts.get("draft_tokens") else None,
        "accepted_per_pos": counts["per_pos"],
        "generated_tokens": sum(map(len, token_ids)),
        "generate_s": round(gen_s, 1),
        "engine_total_s": round(time.perf_counter() - started, 1),
        "outputs_sha256": hashlib.sha256(json.dumps(token_ids).encode()).hexdigest(),
    }


def markdown(result: dict) -> str:
    ks = result["ks"]
    lines = [
        "τ = mean acceptance length, COUNTING THE BONUS TOKEN (τ = 1 + accepted / drafts); "
        f"greedy, float32, {result['num_prompts']} held-out HumanEval prompts, max_tokens {result['max_tokens']}.",
        "",
        "| drafter | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for row, runs in result["rows"].items():
        by_k = {r["k"]: r for r in runs}
        cells = []
        for k in ks:
            run = by_k.get(k)
            cells.append("error" if run is None or run.get("error") else f"{run['tau']:.2f}")
        lines.append(f"| {resolve_row(row)[2]} | " + " | ".join(cells) + " |")
    lines += ["", f"All rows produced identical greedy outputs: {result['lossless']}."]
    for row, runs in result["rows"].items():
        for run in runs:
            if run.get("error"):
                lines.append(f"- {row} k={run['k']}: {run['error']}")
            elif run.get("note"):
                lines.append(f"- {row} k={run['k']}: {run['note']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe-dir", type=Path, default=None, help="recipe_tiny output (target + all drafters)")
    parser.add_argument(
        "--rows",
        default="ar,pard,pard2_ti,pard2_td",
        help=f"comma list of {', '.join(ROWS)} (pard2 rows: ROW@ABLATION)",
    )
    parser.add_argument("--ks", default="4,8,16", help="num_speculative_tokens values")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=80)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tau_table")
    args = parser.parse_args()

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    resolved = {r: resolve_row(r) for r in rows}
    unknown = [r for r, spec in resolved.items() if spec is None]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    ks = [int(k) for k in args.ks.split(",")]
    if args.recipe_dir is None:
        target, drafts = SHIPPED / "target", {"draft_pard2": SHIPPED / "draft"}
    else:
        target = args.recipe_dir / "target"
        drafts = {draft_name: args.recipe_dir / draft_name for draft_name, _, _ in resolved.values()}
    prompts = load_prompts(args.num_prompts)
    result: dict = {
        "tau_definition": "1 + accepted_tokens / drafts (the bonus token is counted)",
        "target": str(target),
        "num_prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "ks": ks,
        "rows": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        draft_name, spec_extra, _ = resolved[row]
        if draft_name not in drafts:
            parser.error(f"row {row} needs --recipe-dir (the shipped assets hold only the PARD-2 drafter)")
        result["rows"][row] = []
        for k in ks:
            print(f"== {row} k={k}", flush=True)
            try:
                run = run_one(target, drafts[draft_name], spec_extra, k, prompts, args)
            except Exception as err:  # one failing row (e.g. a mode not built yet) must not lose the others
                run = {"k": k, "spec": spec_extra, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            result["rows"][row].append(run)
            print(json.dumps({key: run.get(key) for key in ("k", "tau", "acceptance_rate", "error")}), flush=True)
            args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    hashes = {run["outputs_sha256"] for runs in result["rows"].values() for run in runs if "outputs_sha256" in run}
    result["lossless"] = len(hashes) == 1
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
