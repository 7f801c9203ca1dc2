"""benchmarks/gpu_check.py: the prepared GPU check, run as its CPU dry run (tiny shapes).

The dry run is the same code as the GPU command: six tiny-pair engines (no speculation,
pard2 TD and TI, each compiled with Dynamo + inductor and eager), then bench_system with
the trained tiny pair (synthetic rejection is GPU-only). About 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(out.parent / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    return out, done


def test_every_part_writes_its_json(dry_run) -> None:
    out, done = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["shapes"] == "tiny"
    assert set(summary["parts"]) == {"lossless", "bench"}
    for part in ("lossless", "bench"):
        result = json.loads((out / f"{part}.json").read_text())
        assert result["part"] == part and result["seconds"] > 0
    assert done.returncode == (0 if summary["passed"] else 1), done.stdout[-3000:]
    # What the device returns: at most 8 files, no deeper than 2 folders. Everything else is archived.
    returned = [p for p in out.rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in returned)
    with tarfile.open(out / "files.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"lossless/td-compiled.log", "lossless/td-compiled.json", "bench/bench_system/bench_system.png"} <= names


def test_lossless_and_tau_checks_pass(dry_run) -> None:
    out, done = dry_run
    result = json.loads((out / "lossless.json").read_text())
    failed = {v: e for v, e in result["engines"].items() if e["exit_code"] != 0}
    assert not failed, f"engines failed: {failed}; logs in {out / 'lossless'}\n{done.stdout[-2000:]}"
    for variant, check in result["identical_to_no_speculation"].items():
        assert check["passed"] and check["prompts"] == 16, (variant, check)
    for mode, check in result["tau_compiled_vs_eager"].items():
        # The trained pair accepts drafts: tau well above 1, compiled within 1% of eager.
        assert check["eager"] > 1.5 and check["relative_difference"] <= 0.01, (mode, check)
    cudagraph = result["cudagraph_address_check"]
    assert cudagraph["active"] is False and cudagraph["passed"]  # no CUDA graphs on CPU
    assert all(scan["debug_logging"] for scan in cudagraph["per_engine"].values())  # DEBUG reached the engines
    draft_inputs = result["draft_input_address_check"]
    assert draft_inputs["passed"], draft_inputs
    assert result["passed"]


def test_bench_measures_every_setting_with_real_acceptance(dry_run) -> None:
    out, _ = dry_run
    result = json.loads((out / "bench.json").read_text())
    assert result["exit_code"] == 0 and result["missing"] == [] and result["passed"]
    rows = {(r["method"], r["batch_size"]): r for r in result["rows"]}
    assert set(rows) == {(m, b) for m in ("none", "pard2") for b in (1, 2)}
    assert all(rows[("pard2", b)]["tau"] > 1.0 for b in (1, 2))  # trained pair: drafts accepted
    none, pard2 = rows[("none", 2)], rows[("pard2", 2)]
    assert result["ratios_vs_none"]["pard2"]["2"] == round(pard2["throughput_tok_s"] / none["throughput_tok_s"], 3)
    assert "NOT measured" in result["reference_figures"]["source"]


def test_parts_are_selectable_and_unknown_parts_fail_fast(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_check import PARTS, parse_args

    assert list(PARTS) == ["lossless", "bench"]
    args = parse_args(["--out", str(tmp_path), "--skip-bench", "--dry-run"])
    assert args.parts == ["lossless"] and args.shapes == "tiny"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--parts", "adaptive_k"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "unknown part" in done.stderr


def test_a_slow_or_failing_part_is_recorded_and_the_next_part_runs(tmp_path: Path) -> None:
    """Tolerance: a part past its time limit has its processes killed, a part that raises has
    its error recorded, and in both cases the run goes on to the next part."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_check import PARTS, Part, PartContext, main, register_part

    def sleepy(ctx: PartContext) -> dict:
        codes = ctx.run({"sleep": ["sleep", "60"]})
        return {"passed": codes["sleep"] == 0, "sleep_exit_code": codes["sleep"]}

    def broken(ctx: PartContext) -> dict:
        raise ValueError("no such engine")

    def fine(ctx: PartContext) -> dict:
        codes = ctx.run({"echo": ["echo", "hello"]})
        return {"passed": codes["echo"] == 0 and "hello" in (ctx.work / "echo.log").read_text()}

    for name, run, limit in (("sleepy", sleepy, 2), ("broken", broken, 5), ("fine", fine, 5)):
        register_part(Part(name, run, gpu_time_limit_s=limit, cpu_time_limit_s=limit, description=name))
    out = tmp_path / "out"
    try:
        started = time.monotonic()
        code = main(["--out", str(out), "--work", str(tmp_path / "work"), "--parts", "sleepy", "broken", "fine"])
        assert time.monotonic() - started < 40
    finally:
        for name in ("sleepy", "broken", "fine"):
            PARTS.pop(name)
    assert code == 1
    sleep_result = json.loads((out / "sleepy.json").read_text())
    assert sleep_result["sleep_exit_code"] is None and not sleep_result["passed"]  # killed at 2 s
    broken_result = json.loads((out / "broken.json").read_text())
    assert broken_result["error"] == "ValueError: no such engine" and "Traceback" in broken_result["traceback"]
    summary = json.loads((out / "summary.json").read_text())
    assert {name: part["passed"] for name, part in summary["parts"].items()} == {
        "sleepy": False,
        "broken": False,
        "fine": True,
    }
