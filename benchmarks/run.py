"""``python -m benchmarks.run``: does PARD-2 speed up my model on my tasks?

Measures output tokens/s, speed-up over no speculation (measured in the same
invocation), tau (bonus token counted) and per-position acceptance on
HumanEval, GSM8K, MT-Bench and MATH-500, at several batch sizes, either with
in-process vLLM engines (one per method) or against running OpenAI-compatible
servers (streaming, concurrent clients; adds TTFT / ITL). Writes
results.json, results.md and results.png (throughput vs latency).

    python -m benchmarks.run                                   # tiny CPU pair, pard2 vs none
    python -m benchmarks.run -t Qwen/Qwen3-8B -d amd/PARD2-Qwen3-8B -k 12 --mode none,pard2,pard,ar
    python -m benchmarks.run --server http://127.0.0.1:8000 -t Qwen/Qwen3-8B --mode pard2
    python -m benchmarks.run --mode none,pard2,pard2_static:0,pard2_static:2,pard2_static:4,pard2_static:8
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.datasets import BENCHMARKS, SUBSETS, Conversation, canonical_name, load_benchmark
from benchmarks.inprocess import METHODS, MethodSpec

DEFAULT_BATCH_SIZES = "1,4,16,64"
DEFAULT_K = 8
SPEC_METHODS = tuple(m for m in METHODS if m != "none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-t", "--target", help="target model (default: the embedded tiny pair)")
    p.add_argument("-d", "--draft", help="PARD / PARD-2 draft for pard2, pard and ar (default: the tiny pair's)")
    p.add_argument("--eagle3-draft", help="EAGLE-3 draft checkpoint (needed for --mode eagle3)")
    p.add_argument("--tokenizer", help="tokenizer that renders prompts (default: the target; server: its model)")
    p.add_argument("-k", "--draft_k", "--num-speculative-tokens", dest="k", type=int, default=DEFAULT_K,
                   help="drafts per step (default %(default)s); 0 = no speculation only")  # fmt: skip
    p.add_argument("--mode", action="append", metavar="M[:K],...",
                   help=f"methods, comma-separated, repeatable: {', '.join(METHODS)}; ':K' overrides -k for one "
                   "(default: none plus pard2, or ar with --no-para)")  # fmt: skip
    p.add_argument("--para", action=argparse.BooleanOptionalAction, default=True,
                   help="without --mode: parallel (pard2) or autoregressive (ar) drafting against none")  # fmt: skip
    p.add_argument("-b", "--benchmark", default=",".join(BENCHMARKS), help="comma-separated (default: all)")
    p.add_argument("--subset", choices=SUBSETS, default="pard",
                   help="pard: PARD's 80 HumanEval / 80 GSM8K / 20 MATH-500 and all 80 MT-Bench; full: whole sets")  # fmt: skip
    p.add_argument("--num-prompts", type=int, help="first N items of each benchmark (default: all)")
    p.add_argument("--batch-sizes", default=DEFAULT_BATCH_SIZES, help="concurrent requests (default %(default)s)")
    p.add_argument("--tokens", "--max-tokens", dest="max_tokens", type=int, default=256,
                   help="max new tokens per turn (default %(default)s)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true", help="always generate --tokens tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pard2-mode", choices=("auto", "target_dependent", "target_independent"),
                   help="pard2_mode key for the pard2 speculative config (default: the plugin's)")  # fmt: skip
    p.add_argument("--server", action="append", metavar="URL",
                   help="measure this running OpenAI-compatible server instead (repeatable; one --mode entry each)")  # fmt: skip
    engine = p.add_argument_group("in-process engine (vLLM LLM arguments)")
    engine.add_argument("--dtype", help="default: auto (float32 for the tiny pair)")
    engine.add_argument("--max-model-len", type=int)
    engine.add_argument("--kv-cache-memory-bytes", type=int, help="KV budget per engine (CPU: set this)")
    engine.add_argument("--gpu-memory-utilization", type=float)
    engine.add_argument("--tensor-parallel-size", type=int)
    engine.add_argument("--max-num-seqs", type=int, help="default: the largest batch size")
    engine.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compilation")
    p.add_argument("--pair-cache", type=Path, default=models.DEFAULT_PAIR_CACHE,
                   help="where the random tiny pair is built when no trained pair is embedded")  # fmt: skip
    p.add_argument("--output-dir", type=Path, help="default: bench_results/<UTC time>")
    p.add_argument("--no-plot", action="store_true", help="skip results.png")
    return p


def _int_list(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{what} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{what} must be positive integers, got {text!r}")
    return sorted(set(values))


def _methods(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[MethodSpec]:
    if not args.mode:
        if args.server:
            return [MethodSpec("server", None)] if len(args.server) == 1 else []
        if args.k == 0:
            return [MethodSpec("none", None)]
        return [MethodSpec("none", None), MethodSpec("pard2" if args.para else "ar", args.k)]
    methods = []
    for item in ",".join(args.mode).split(","):
        if not item.strip():
            continue
        name, _, k_text = item.strip().partition(":")
        if name not in METHODS:
            parser.error(f"unknown mode {name!r}; choose from {', '.join(METHODS)}")
        try:
            k = int(k_text) if k_text else args.k
        except ValueError:
            parser.error(f"mode {item!r}: K after ':' must be an integer")
        if name == "none":
            methods.append(MethodSpec("none", None))
        elif k < 0 or (k == 0 and name != "pard2_static"):
            parser.error(f"mode {name} needs k >= 1 (k = 0 means no speculation: use --mode none; "
                         "pard2_static:0 is pard2 with the drafter skipped every step)")  # fmt: skip
        else:
            methods.append(MethodSpec(name, None if args.server else k))
    if len({m.label for m in methods}) != len(methods) and not args.server:
        parser.error("a mode is listed twice")
    return methods


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check everything that can be checked before any engine or server work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 0:
        parser.error("-k must be >= 0")
    if args.max_tokens < 1:
        parser.error("--tokens must be >= 1")
    if args.num_prompts is not None and args.num_prompts < 1:
        parser.error("--num-prompts must be >= 1")
    if args.temperature < 0:
        parser.error("--temperature must be >= 0")
    args.batch_sizes = _int_list(args.batch_sizes, "--batch-sizes", parser)
    try:
        args.benchmarks = list(dict.fromkeys(canonical_name(b) for b in args.benchmark.split(",") if b.strip()))
    except ValueError as error:
        parser.error(str(error))
    if not args.benchmarks:
        parser.error("-b names no benchmark")
    args.methods = _methods(args, parser)
    if args.server:
        for url in args.server:
            if not url.startswith(("http://", "https://")):
                parser.error(f"--server wants an http(s) URL, got {url!r}")
        if len(args.methods) != len(args.server):
            parser.error(f"{len(args.server)} --server URLs need as many --mode entries (the method each runs), "
                         f"got {len(args.methods)}")  # fmt: skip
    else:
        names = {m.name for m in args.methods}
        if (args.target is None) != (args.draft is None) and names & {"pard2", "pard2_static", "pard", "ar"}:
            parser.error("give both -t/--target and -d/--draft, or neither (embedded tiny pair)")
        if "eagle3" in names and not args.eagle3_draft:
            parser.error("--mode eagle3 needs --eagle3-draft (an EAGLE-3 checkpoint for the target)")
        for flag, value in (("-t", args.target), ("-d", args.draft), ("--eagle3-draft", args.eagle3_draft)):
            if value and models.looks_like_path(value) and not Path(value).expanduser().exists():
                parser.error(f"{flag} {value}: no such directory")
        if args.max_num_seqs is not None and args.max_num_seqs < max(args.batch_sizes):
            parser.error("--max-num-seqs is smaller than the largest batch size")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("matplotlib is not installed (pip install matplotlib), or pass --no-plot")
    if args.output_dir is None:
        args.output_dir = Path("bench_results") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return args


def machine_description() -> str:
    parts = [platform.platform(), f"{os.cpu_count()} CPU threads"]
    try:
        cpu_names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        if cpu_names:
            parts.append(cpu_names[0])
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
        else:
            parts.append("no GPU")
    except ImportError:
        pass
    return "; ".join(parts)


def run_all(args: argparse.Namespace, argv: list[str]) -> dict[str, Path]:
    from tqdm import tqdm

    from benchmarks.measure import summarize
    from benchmarks.report import write_report

    data: dict[str, list[Conversation]] = {b: load_benchmark(b, args.subset, args.num_prompts) for b in args.benchmarks}
    pair = None
    if args.server:
        target, draft = args.target, args.draft
    elif args.target is None:
        target, draft, pair = models.default_pair(args.pair_cache)
    else:
        target, draft = args.target, args.draft
    report: dict[str, Any] = {
        "meta": {
            "target": target,
            "draft": draft,
            "eagle3_draft": args.eagle3_draft,
            "pair": pair,
            "driver": "server (streaming clients): " + ", ".join(args.server) if args.server else "in-process vLLM",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_description() if not args.server else "client: " + machine_description(),
            "vllm_version": models.vllm_version(),
            "subset": args.subset,
            "benchmarks": {b: len(c) for b, c in data.items()},
            "batch_sizes": args.batch_sizes,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "ignore_eos": args.ignore_eos,
            "command": "python -m benchmarks.run " + shlex.join(argv),
        },
        "results": [],
    }
    for index, method in enumerate(args.methods):
        driver, close = models.open_driver(args, method, index, target, draft, pair is not None)
        try:
            driver.warm_up(next(iter(data.values()))[0])
            for bench, conversations in data.items():
                for batch_size in args.batch_sizes:
                    total = sum(len(c.turns) for c in conversations)
                    with tqdm(total=total, desc=f"{method.label} {bench} bs={batch_size}", unit="req") as bar:
                        measured = driver.run(conversations, batch_size, lambda bar=bar: bar.update(1))
                    row = {"method": method.name, "method_label": method.label, "k": method.k}
                    row |= {"benchmark": bench, "batch_size": batch_size, **summarize(measured)}
                    report["results"].append(row)
                    write_report(report, args.output_dir, make_plot=False)  # partial results survive a crash
        finally:
            close()
    return write_report(report, args.output_dir, make_plot=not args.no_plot)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    paths = run_all(args, argv)
    print(paths["markdown"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
