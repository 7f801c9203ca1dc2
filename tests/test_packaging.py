"""The wheel installs the plugin only: no top-level ``benchmarks`` package.

A top-level package named ``benchmarks`` in site-packages would shadow (or be
shadowed by) any other distribution's; the benchmarks run from a checkout
(``python -m benchmarks.run``). The wheel is built from a copy of the sources,
so the checkout gets no ``build/`` directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_plugin(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("vllm_pard2", "benchmarks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path / "dist")], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("vllm_pard2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {name.split("/")[0] for name in names} == {"vllm_pard2", wheel.name.split("-py")[0] + ".dist-info"}
    assert "benchmarks" not in entry_points
    assert "pard2 = vllm_pard2:register" in entry_points
    assert any(name.startswith("vllm_pard2/assets/tiny_pard2/") for name in names), "the embedded pair ships"
    assert "vllm_pard2/proposer/pard2_proposer.py" in names


def test_benchmarks_import_from_the_checkout():
    """``python -m benchmarks.run`` works from the repository root without an install."""
    done = subprocess.run(
        [sys.executable, "-c", "import benchmarks.run, benchmarks; print(benchmarks.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == ROOT / "benchmarks"
