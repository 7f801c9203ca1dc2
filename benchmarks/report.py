"""Write benchmark results as JSON, a Markdown table and a throughput-latency PNG.

Also a small command that merges result files of several invocations (for
example one per benchmark, to keep each engine session short) and renders
them again:

    python -m benchmarks.report run1/results.json run2/results.json --output-dir merged
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.measure import TAU_DEFINITION

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "results.md", "results.png"
BASELINE = "none"


def add_speedups(results: list[dict[str, Any]]) -> None:
    """``speedup_vs_none``: output tokens/s over the no-speculation run of the same
    benchmark and batch size in the same results (None without one)."""
    baseline = {(r["benchmark"], r["batch_size"]): r["output_tokens_per_s"] for r in results if r["method"] == BASELINE}
    for r in results:
        base = baseline.get((r["benchmark"], r["batch_size"]))
        r["speedup_vs_none"] = r["output_tokens_per_s"] / base if base and r["output_tokens_per_s"] else None


def adaptive_summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per benchmark and batch size: pard2's default (adaptive k) against no speculation
    and against the best ``pard2_static`` k of the same invocation (issue "never
    slower": >= 0.97x none everywhere, >= 0.95x the best static k, and within 5 % of
    it at batch 1). Empty unless both kinds of pard2 run were measured."""
    rows = []
    for r in results:
        if r["method"] != "pard2" or not r["output_tokens_per_s"]:
            continue
        cell = [s for s in results if (s["benchmark"], s["batch_size"]) == (r["benchmark"], r["batch_size"])]
        static = [s for s in cell if s["method"] == "pard2_static" and s["output_tokens_per_s"]]
        none = next((s["output_tokens_per_s"] for s in cell if s["method"] == BASELINE), None)
        if not static or not none:
            continue
        best = max(static, key=lambda s: s["output_tokens_per_s"])
        vs_best = r["output_tokens_per_s"] / best["output_tokens_per_s"]
        rows.append({
            "benchmark": r["benchmark"],
            "batch_size": r["batch_size"],
            "none_tokens_per_s": none,
            "adaptive_vs_none": r["output_tokens_per_s"] / none,
            "best_static": best["method_label"],
            "best_static_vs_none": best["output_tokens_per_s"] / none,
            "adaptive_vs_best_static": vs_best,
            "meets_targets": r["output_tokens_per_s"] / none >= 0.97
            and vs_best >= (0.95 if r["batch_size"] > 1 else 1 / 1.05),
        })  # fmt: skip
    return rows


def _adaptive_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | batch | none tok/s | adaptive / none | best static k | best static / none | "
        "adaptive / best static | targets met |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['benchmark']} | {row['batch_size']} | {row['none_tokens_per_s']:.1f} | "
            f"{row['adaptive_vs_none']:.2f} | {row['best_static']} | {row['best_static_vs_none']:.2f} | "
            f"{row['adaptive_vs_best_static']:.2f} | {'yes' if row['meets_targets'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _per_pos(rates: list[float] | None, limit: int = 8) -> str:
    if not rates:
        return "-"
    shown = " ".join(f"{r:.2f}" for r in rates[:limit])
    return shown + (" …" if len(rates) > limit else "")


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "| benchmark | batch | method | out tok/s | speed-up | τ | acceptance rate by draft position | "
        "latency p50 (s) | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        ttft, itl = r["ttft_ms"], r["itl_ms"]
        lines.append(
            f"| {r['benchmark']} | {r['batch_size']} | {r['method_label']} | {_fmt(r['output_tokens_per_s'], '.1f')} | "
            f"{_fmt(r['speedup_vs_none'], '.2f')} | {_fmt(r['tau'], '.2f')} | "
            f"{_per_pos(r['acceptance_rate_per_position'])} | {_fmt(r['request_latency_s']['p50'], '.2f')} | "
            f"{_fmt(ttft['p50'], '.0f')} / {_fmt(ttft['p99'], '.0f')} | {_fmt(itl['p50'], '.1f')} / {_fmt(itl['p99'], '.1f')} |"
        )
    header = [
        f"- target: `{meta['target']}`",
        f"- draft: `{meta.get('draft')}`" + (f" ({meta['pair']})" if meta.get("pair") else ""),
        f"- measured: {meta['driver']}; {meta['date']}; {meta['machine']}",
        f"- prompts: subset `{meta['subset']}`, max {meta['max_tokens']} new tokens, temperature {meta['temperature']}",
        f"- {TAU_DEFINITION}. Speed-up: output tokens/s over no speculation, same benchmark and batch size, "
        "same invocation. Acceptance rate at position i: drafts whose i-th token was accepted / drafts. "
        "ITL: gap between streamed chunks (one chunk can carry several tokens with speculation).",
    ]
    if meta.get("command"):
        header.append(f"- command: `{meta['command']}`")
    text = "\n".join(header) + "\n\n" + "\n".join(lines) + "\n"
    summary = report.get("adaptive_k_summary")
    if summary:
        text += "\nAdaptive k (pard2 default) against no speculation and the best static k:\n\n"
        text += _adaptive_markdown(summary)
    return text


def plot(report: dict[str, Any], path: Path) -> None:
    """One panel per benchmark: output tokens/s (x) against mean request latency (y),
    one curve per method through its batch sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in results))
    methods = list(dict.fromkeys(r["method_label"] for r in results))
    cols = min(2, len(benchmarks))
    rows = (len(benchmarks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax, bench in zip(axes.flat, benchmarks, strict=False):
        for method in methods:
            points = sorted(
                (r["batch_size"], r["output_tokens_per_s"], r["request_latency_s"]["mean"])
                for r in results
                if r["benchmark"] == bench and r["method_label"] == method and r["output_tokens_per_s"]
            )
            if not points:
                continue
            ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=method)
            for batch, x, y in points:
                ax.annotate(f"bs{batch}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title(bench)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel("mean request latency (s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(benchmarks) :]:
        ax.set_visible(False)
    fig.suptitle(f"{report['meta']['target']} ({report['meta']['driver']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], output_dir: Path, make_plot: bool = True) -> dict[str, Path]:
    """Write results.json, results.md and (unless disabled) results.png; return their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    add_speedups(report["results"])
    report["adaptive_k_summary"] = adaptive_summary(report["results"])
    report["tau_definition"] = TAU_DEFINITION
    paths = {"json": output_dir / JSON_NAME, "markdown": output_dir / MARKDOWN_NAME}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    if make_plot:
        paths["plot"] = output_dir / PLOT_NAME
        plot(report, paths["plot"])
    return paths


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several: the first one's meta, everyone's results."""
    merged = {"meta": dict(reports[0]["meta"]), "results": []}
    commands = [r["meta"].get("command") for r in reports if r["meta"].get("command")]
    merged["meta"]["command"] = " ; ".join(commands) if commands else None
    for report in reports:
        merged["results"] += report["results"]
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Merge benchmark result files and render them again.")
    parser.add_argument("results", nargs="+", type=Path, help="results.json files")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
    for name, path in write_report(merge(reports), args.output_dir, not args.no_plot).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
