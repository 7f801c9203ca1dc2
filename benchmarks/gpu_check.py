"""The one prepared GPU check: losslessness under CUDA graphs, then system speed, in one command.

Meant for the lent GPU machine, where one command may run 10 minutes and the whole session
has 15 (``docs/gpu_check.md``). Every part writes ``OUT/<part>.json``; a part that fails or
runs out of time records why and the next part runs. ``OUT/summary.json`` lists them all, and
``OUT/files.tar.gz`` holds the working folder (``--work``: engine logs, raw outputs, the bench
plot). The device returns at most 8 files, at most 2 folders down, so nothing else goes to OUT.

Parts (``--parts``, in this order by default):
  lossless  the embedded trained tiny pair (``vllm_pard2/assets/tiny_pard2``): no speculation,
            pard2 target-dependent and target-independent, each compiled (torch.compile +
            CUDA graphs, vLLM's default) and eager (``enforce_eager=True``): one engine per
            variant, every prompt through it once. Checks greedy outputs identical to no
            speculation, tau compiled vs eager within 1%, and scans the engine logs
            (``VLLM_LOGGING_LEVEL=DEBUG``, which turns on vLLM's CUDA-graph replay check that
            every input keeps its captured address) for that check's failures.
  bench     ``bench_system.py`` at Qwen3-8B / Qwen3-0.6B shapes, dummy weights, synthetic
            tau 5, k 8: no speculation and pard2 at batch 1/16/64, engines started at once and
            measured one at a time; ratios to no speculation from this run. The anchors'
            in-tree PARD and EAGLE-3 figures stand in, labelled as reference, not measured.
More parts (adaptive k, a vLLM 0.34 mode) register in ``PARTS`` with ``register_part``.

    python benchmarks/gpu_check.py --out $OUT                  # GPU: at most 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/check  # CPU: same code, tiny shapes, ~4 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks.*` when run as a script

from benchmarks.gpu_check_lossless import embedded_pair, fixed_k, lossless_part  # noqa: E402

BENCH_SYSTEM = ROOT / "benchmarks" / "bench_system.py"
GPU_BUDGET_S = 480  # of the device's 10-minute command: the rest for pip install, kills and the archive
SYNTHETIC_TAU = 5.0
# Measured by the anchors on an H100, 2026-11-22 (output tok/s, 512 in / 256 out, tau 5, k 8).
REFERENCE_FIGURES = {
    "source": "anchors' H100 run of 2026-11-22; reference figures, NOT measured by this check",
    "tok_s": {"pard": {"1": 426, "16": 5021, "64": 5000}, "eagle3": {"1": 391, "16": 4559, "64": 7766}},
    "note": "in-tree PARD at batch 64 is given as about 5 000",
}


@dataclass
class PartContext:
    """What a part gets: its own output folder, the settings, and its time limit."""

    args: argparse.Namespace
    work: Path  # the part's working folder, WORK/<part>; only the part's JSON goes to OUT
    on_gpu: bool
    deadline: float  # time.monotonic() by which every process of the part must be gone
    notes: list[str] = field(default_factory=list)

    @property
    def tiny(self) -> bool:
        return self.args.shapes == "tiny"

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, commands: dict[str, list[str]], env: dict[str, str] | None = None, jobs: int = 1) -> dict:
        """Run named commands, ``jobs`` at a time, logging to WORK/<part>/<name>.log, killing each
        one's process group at the deadline. Exit codes by name; None: killed for time."""
        return run_processes(self, commands, env, jobs)


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[PartContext], dict]
    gpu_time_limit_s: float
    cpu_time_limit_s: float
    description: str


PARTS: dict[str, Part] = {}


def register_part(part: Part) -> None:
    """Add a part; ``--parts`` runs them in registration order unless told otherwise."""
    PARTS[part.name] = part


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_processes(
    ctx: PartContext, commands: dict[str, list[str]], env: dict[str, str] | None, jobs: int
) -> dict[str, int | None]:
    """Run named commands, ``jobs`` at a time, each in its own session (so engine-core children die
    with it) and logging to WORK/<part>/<name>.log. At the part's deadline every one still running
    is killed; its code is None."""
    pending = list(commands)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    codes: dict[str, int | None] = {}
    while pending or running:
        while pending and len(running) < jobs and ctx.seconds_left() > 0:
            name = pending.pop(0)
            with open(ctx.work / f"{name}.log", "w") as log_file:
                process = subprocess.Popen(
                    commands[name], stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            running[name] = (process, time.monotonic())
            log(f"  {name}: started")
        if pending and ctx.seconds_left() <= 0:
            codes.update(dict.fromkeys(pending))
            pending.clear()
        for name, (process, started) in list(running.items()):
            if process.poll() is not None:
                codes[name] = process.returncode
                with contextlib.suppress(ProcessLookupError):  # engine processes it left behind
                    os.killpg(process.pid, signal.SIGKILL)
                log(f"  {name}: exit {process.returncode} after {time.monotonic() - started:.0f} s")
                del running[name]
            elif ctx.seconds_left() <= 0:
                kill_group(process)
                codes[name] = None
                log(f"  {name}: killed at the part's time limit")
                del running[name]
        time.sleep(0.5)
    return codes


def kill_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def bench_part(ctx: PartContext) -> dict:
    """bench_system.py in one process tree: no speculation and pard2 (plus ``--bench-methods``)."""
    args = ctx.args
    out = ctx.work / "bench_system"
    command = [sys.executable, str(BENCH_SYSTEM), "--out", str(out), "--methods", *args.bench_methods]
    command += ["-k", str(args.k), "--concurrent-starts", "--repeats", "2"]
    if fixed_k():
        command.append("--pard2-fixed-k")  # measure k = 8 itself, not the adaptive-k policy
    batch_sizes = [1, 2] if ctx.tiny else [1, 16, 64]
    command += ["--batch-sizes", *map(str, batch_sizes)]
    if ctx.tiny:
        # Synthetic rejection is GPU-only: on CPU the trained tiny pair gives a real tau.
        command += ["--pair", *embedded_pair(), "--prompt-len", "16", "--output-len", "8"]
    else:
        methods = args.bench_methods
        command += ["--shapes", "gpu", "--acceptance-length", str(SYNTHETIC_TAU)]
        command += ["--kv-cache-mib", str(args.bench_kv_cache_mib), "--gpu-memory-utilization", str(0.85)]
        ctx.notes.append(f"{len(methods)} engines started at once, KV cache {args.bench_kv_cache_mib} MiB each")
    env = dict(os.environ)
    if not ctx.on_gpu:  # engines in the worker process (one vLLM import, not three), no pinning to core 0
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND="nobind")
    code = ctx.run({"bench_system": command}, env)["bench_system"]
    result: dict[str, Any] = {"command": command, "exit_code": code, "reference_figures": REFERENCE_FIGURES}
    summary_path = out / "bench_system.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        rows, result["config"], result["skipped"] = summary["results"], summary["config"], summary["skipped"]
    else:  # killed for time: keep whichever methods finished
        rows = []
        for method in args.bench_methods:
            path = out / f"rows_{method}.json"
            rows += json.loads(path.read_text())["rows"] if path.exists() else []
        result["skipped"] = [m for m in args.bench_methods if not (out / f"rows_{m}.json").exists()]
    result["rows"] = rows
    result["ratios_vs_none"] = ratios_vs_none(rows)
    if not ctx.tiny:
        result["pard2_over_reference"] = {
            method: {
                str(r["batch_size"]): round(r["throughput_tok_s"] / figures[str(r["batch_size"])], 3)
                for r in rows
                if r["method"] == "pard2" and str(r["batch_size"]) in figures
            }
            for method, figures in REFERENCE_FIGURES["tok_s"].items()
        }
        result["pard2_over_reference_note"] = (
            "measured pard2 / reference figure; other run and machine: indicative only"
        )
        # Information: the synthetic sampler should give a measured tau near the one asked for.
        result["tau_vs_synthetic"] = {
            f"{r['method']}@{r['batch_size']}": r["tau"] and round(r["tau"] / SYNTHETIC_TAU, 3)
            for r in rows
            if r["method"] != "none"
        }
    result["headline"] = {
        f"{r['method']}@{r['batch_size']}": [round(r["throughput_tok_s"]), r["tau"] and round(r["tau"], 2)]
        for r in rows
    }
    wanted = {(m, b) for m in args.bench_methods for b in batch_sizes}
    result["missing"] = sorted(wanted - {(r["method"], r["batch_size"]) for r in rows})
    # Every setting measured, and every speculative row accepted something (tau > 1).
    accepted = all(r["tau"] and r["tau"] > 1.0 for r in rows if r["method"] != "none")
    result["passed"] = code == 0 and not result["missing"] and accepted
    return result


def ratios_vs_none(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Throughput of each method over no speculation at the same batch size, this run only."""
    none = {r["batch_size"]: r["throughput_tok_s"] for r in rows if r["method"] == "none"}
    ratios: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] != "none" and r["batch_size"] in none:
            ratios.setdefault(r["method"], {})[str(r["batch_size"])] = round(
                r["throughput_tok_s"] / none[r["batch_size"]], 3
            )
    return ratios


register_part(
    Part("lossless", lossless_part, 150, 420, "tiny pair TD/TI: compiled vs eager, identical to no speculation")
)
register_part(Part("bench", bench_part, 390, 240, "bench_system none vs pard2 (GPU: Qwen3-8B/0.6B shapes, tau 5)"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created): JSON + files.tar.gz")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: /tmp/gpu_check_work)")
    parser.add_argument("--shapes", choices=("gpu", "tiny"), default="gpu", help="tiny: the CPU dry run")
    parser.add_argument("--dry-run", action="store_true", help="= --shapes tiny: same code, tiny shapes, on CPU")
    parser.add_argument("--parts", nargs="+", default=None, help=f"parts to run, in order (default: {' '.join(PARTS)})")
    parser.add_argument("--skip-bench", action="store_true", help="leave out the bench part")
    parser.add_argument("--budget-s", type=float, default=None, help="whole run (default: 480 on GPU, none on CPU)")
    parser.add_argument("-k", type=int, default=8, help="drafts per step")
    parser.add_argument("--bench-methods", nargs="+", default=["none", "pard2"], help="bench_system methods")
    parser.add_argument("--bench-kv-cache-mib", type=int, default=16384, help="per bench engine on the GPU")
    parser.add_argument("--lossless-prompts", type=int, default=16, help="prompts per lossless engine")
    parser.add_argument("--lossless-tokens", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--lossless-dtype", default="float32", help="float32: exact greedy comparisons")
    parser.add_argument("--cpu-jobs", type=int, default=2, help="lossless engines at once on CPU")
    parser.add_argument("--lossless-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.shapes = "tiny"
    args.work = args.work or Path(tempfile.gettempdir()) / "gpu_check_work"
    args.parts = args.parts or list(PARTS)
    if args.skip_bench:
        args.parts = [p for p in args.parts if p != "bench"]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; known: {list(PARTS)}")
    return args


def run_part(part: Part, args: argparse.Namespace, on_gpu: bool, run_deadline: float) -> dict:
    limit = part.gpu_time_limit_s if on_gpu else part.cpu_time_limit_s
    deadline = min(time.monotonic() + limit, run_deadline)
    ctx = PartContext(args, args.work / part.name, on_gpu, deadline)
    shutil.rmtree(ctx.work, ignore_errors=True)  # no stale files from an earlier run
    ctx.work.mkdir(parents=True)
    log(f"part {part.name}: {part.description} (limit {ctx.seconds_left():.0f} s)")
    started = time.monotonic()
    try:
        result = part.run(ctx)
    except Exception as exc:  # a failing part must not stop the others
        result = {"passed": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result.update(part=part.name, seconds=round(time.monotonic() - started, 1), time_limit_s=limit, notes=ctx.notes)
    result.setdefault("passed", False)
    (args.out / f"{part.name}.json").write_text(json.dumps(result, indent=2))
    log(f"part {part.name}: {'PASSED' if result['passed'] else 'FAILED'} in {result['seconds']} s")
    # The device shows the command's last output even when no file comes back.
    log(f"part {part.name} headline: {result.get('headline') or result.get('error')}")
    return result


def bundle(work: Path, archive: Path, max_bytes: int = 15 << 20) -> None:
    """The working folder as one archive (the device returns 16 MiB a file): whole, or else with
    each log cut to its last 400 lines."""
    for tail_lines in (None, 400):
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(p for p in work.rglob("*") if p.is_file()):
                name = str(path.relative_to(work))
                if tail_lines and path.suffix == ".log":
                    data = "\n".join(path.read_text(errors="replace").splitlines()[-tail_lines:]).encode()
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.add(path, arcname=name)
        if archive.stat().st_size <= max_bytes:
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.lossless_worker:
        from benchmarks.gpu_check_lossless import lossless_worker

        return lossless_worker(args)
    import torch

    on_gpu = torch.cuda.is_available()
    budget = args.budget_s or (GPU_BUDGET_S if on_gpu else 3600)
    run_deadline = time.monotonic() + budget
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    log(f"device {device}, shapes {args.shapes}, parts {args.parts}, budget {budget:.0f} s")
    summary: dict[str, Any] = {"device": device, "shapes": args.shapes, "argv": sys.argv[1:], "parts": {}}
    for name in args.parts:
        if run_deadline - time.monotonic() < 30:
            summary["parts"][name] = {"passed": False, "error": "not run: the run's time budget is spent"}
            continue
        result = run_part(PARTS[name], args, on_gpu, run_deadline)
        summary["parts"][name] = {k: result.get(k) for k in ("passed", "seconds", "error")}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["passed"] = all(p["passed"] for p in summary["parts"].values())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    bundle(args.work, args.out / "files.tar.gz")
    log(f"{'ALL PASSED' if summary['passed'] else 'SOME PARTS FAILED'}; results in {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
