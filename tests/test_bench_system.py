"""benchmarks/bench_system.py: config generation, and a CPU smoke run (tiny shapes, dummy weights).

The smoke run starts one tiny engine per method (none, pard, eagle3 with and
without a batch-size schedule, pard2 with and without one; about two minutes on
2 cores). It checks the harness, not speed: on CPU every method uses
standard rejection, so random dummy weights give tau close to 1.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_system.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_system", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_shapes_are_the_reference_models(bench) -> None:
    configs = bench.model_configs("gpu")
    target, draft, eagle = configs["target"], configs["draft"], configs["eagle3"]
    assert (target["hidden_size"], target["intermediate_size"], target["num_hidden_layers"]) == (4096, 12288, 36)
    assert (target["num_attention_heads"], target["num_key_value_heads"], target["head_dim"]) == (32, 8, 128)
    assert target["vocab_size"] == draft["vocab_size"] == 151936
    assert (draft["hidden_size"], draft["num_hidden_layers"], draft["intermediate_size"]) == (1024, 28, 3072)
    assert (draft["num_attention_heads"], draft["num_key_value_heads"]) == (16, 8)
    assert draft["pard_token"] == 151670
    assert eagle["architectures"] == ["LlamaForCausalLMEagle3"] and eagle["hidden_size"] == 4096
    assert eagle["eagle_aux_hidden_state_layer_ids"] == [2, 18, 33]


def test_speculative_configs(bench) -> None:
    args = bench.parse_args(["--out", "/tmp/unused", "-k", "4", "--acceptance-length", "9"])
    paths = {"draft": "D", "eagle3": "E", "target": "T"}
    assert bench.speculative_config("none", args, paths, on_gpu=True) is None
    pard = bench.speculative_config("pard", args, paths, on_gpu=True)
    assert pard["method"] == "draft_model" and pard["parallel_drafting"] is True
    assert pard["rejection_sample_method"] == "synthetic" and pard["synthetic_acceptance_length"] == 5.0  # <= k + 1
    assert bench.speculative_config("pard2", args, paths, on_gpu=False) == {
        "method": "pard2",
        "model": "D",
        "num_speculative_tokens": 4,
    }
    schedule = bench.speculative_config("eagle3_schedule", args, paths, on_gpu=True)
    assert schedule["num_speculative_tokens_per_batch_size"] == [(1, 16, 8), (17, 64, 4), (65, 4096, 2)]


def test_cpu_smoke_run_writes_json_and_png(bench, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, str(BENCH), "--shapes", "tiny", "--batch-sizes", "1", "2", "--prompt-len", "16"]
    command += ["--output-len", "6", "-k", "3", "--pard2-schedule", "1-1:3,2-64:0", "--out", str(out)]
    command += ["--pard2-fixed-k"]  # pard2 at k = 3 every step: the counters below compare fixed k
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((out / "bench_system.json").read_text())
    assert summary["config"]["rejection"] == "standard" and summary["config"]["device"] == "cpu"
    measured = {(row["method"], row["batch_size"]): row for row in summary["results"]}
    assert set(measured) == {(m, b) for m in bench.METHODS for b in (1, 2)}
    for (method, batch_size), row in measured.items():
        assert row["repeat"] == 1  # the second run is the one kept
        assert row["output_tokens"] == 6 * batch_size and row["throughput_tok_s"] > 0 and row["step_ms"] > 0
        if method == "none":
            assert row["tau"] is None and row["num_drafts"] == 0
        elif (method, batch_size) == ("pard2_schedule", 2):
            # k = 0 at batch size 2: drafts only in a step where one request ran alone
            # (the engine may start the first request a step before the second), while
            # pard2 at fixed k = 3 drafts for both requests every step (>= 2 steps each).
            assert row["num_drafts"] <= 2 and row["num_drafts"] < measured[("pard2", 2)]["num_drafts"]
        else:
            assert row["num_drafts"] > 0 and 1.0 <= row["tau"] <= 4.0
    assert summary["skipped"] == []

    from PIL import Image

    with Image.open(out / "bench_system.png") as image:
        assert image.format == "PNG" and image.size[0] > 400
