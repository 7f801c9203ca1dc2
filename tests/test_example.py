"""The README's main job, ``examples/offline_pard2.py``, runs and reports pard2 as lossless."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "offline_pard2.py"
TIMEOUT_S = 600


def test_offline_example_runs() -> None:
    """The README's command as is: the embedded trained pair, no arguments
    besides a smaller workload."""
    args = [
        sys.executable,
        str(EXAMPLE),
        "-k", "4",
        "--num-prompts", "4",
        "--max-tokens", "16",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"example exited with {proc.returncode}:\n{tail}"

    out = proc.stdout
    assert "tau" in out and "identical" in out, tail
    assert "bonus token counted" in out, tail
    assert "one at a time (batch 1)" in out and "all at once (batch 4)" in out, tail
    rows = [line.split() for line in out.splitlines() if line.startswith("pard2")]
    assert len(rows) == 2, tail  # one per workload
    for row in rows:
        tau, identical = row[-2], row[-1]
        assert float(tau) > 1.5, tail  # the trained drafter's first drafts are mostly accepted
        assert identical == "yes", tail
