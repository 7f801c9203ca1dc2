"""The task benchmark end to end on CPU with the tiny pair: in process and against a server.

A few prompts of every dataset, two batch sizes: the in-process run compares
pard2 with no speculation (two engines); the server run streams from one
``vllm-pard2 serve`` with pard2 on loopback. Both check the JSON fields and
that the Markdown table and the PNG are written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.datasets import BENCHMARKS, PromptRenderer, load_benchmark
from benchmarks.run import main as bench_main
from benchmarks.run import parse_args

from conftest import KV_CACHE_BYTES

NUM_PROMPTS = 2
BATCH_SIZES = [1, 2]
K = 3
MAX_TOKENS = 12
MAX_MODEL_LEN = 1024
# pard_bmk records per benchmark (MT-Bench: all 80, two turns each).
PARD_SIZES = {"humaneval": 80, "gsm8k": 80, "mt_bench": 80, "math_500": 20}
FULL_SIZES = {"humaneval": 164, "gsm8k": 1319, "mt_bench": 80, "math_500": 500}


def _common_args(output_dir: Path) -> list[str]:
    return [
        "--num-prompts", str(NUM_PROMPTS),
        "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--tokens", str(MAX_TOKENS),
        "--output-dir", str(output_dir),
    ]  # fmt: skip


def _load(output_dir: Path) -> dict:
    assert (output_dir / "results.md").read_text().count("\n|") >= 2
    png = output_dir / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((output_dir / "results.json").read_text())


def _check_common(row: dict) -> None:
    turns = 2 if row["benchmark"] == "mt_bench" else 1
    assert row["num_requests"] == NUM_PROMPTS * turns, row
    assert row["skipped_turns"] == 0
    assert 0 < row["output_tokens"] <= row["num_requests"] * MAX_TOKENS
    assert row["output_tokens_per_s"] > 0 and row["duration_s"] > 0
    for key in ("request_latency_s", "ttft_ms", "itl_ms"):
        assert row[key]["p50"] is not None and row[key]["p99"] >= row[key]["p50"] > 0, (key, row)


def _check_spec(row: dict) -> None:
    assert row["num_drafts"] > 0
    assert row["tau"] == pytest.approx(1 + row["num_accepted_tokens"] / row["num_drafts"])
    assert 1.0 <= row["tau"] <= K + 1
    rates = row["acceptance_rate_per_position"]
    assert len(rates) == K and all(0.0 <= r <= 1.0 for r in rates)
    # draft_copy is the target's own weights: the first draft is nearly always right.
    assert rates[0] > 0.5
    assert rates == sorted(rates, reverse=True)  # a later position is accepted only after the earlier ones


def test_datasets_have_their_documented_sizes() -> None:
    for subset, sizes in (("pard", PARD_SIZES), ("full", FULL_SIZES)):
        for name in BENCHMARKS:
            items = load_benchmark(name, subset)
            assert len(items) == sizes[name], (subset, name)
            assert all(len(c.turns) == (2 if name == "mt_bench" else 1) for c in items)
    assert load_benchmark("humaneval", "pard")[0].turns[0].startswith("Complete the code I provided.")
    assert len(load_benchmark("gsm8k", "full", num_prompts=5)) == 5


def test_chat_template_second_turn_carries_the_first_answer(tiny_pair) -> None:
    from transformers import AutoTokenizer

    renderer = PromptRenderer(AutoTokenizer.from_pretrained(tiny_pair["target"]))
    assert renderer.uses_chat_template
    conversation = load_benchmark("mt_bench", "pard", 1)[0]
    text = renderer.text(conversation.turns, ["MY FIRST ANSWER"])
    first, answer, second = (text.index(s) for s in (conversation.turns[0], "MY FIRST ANSWER", conversation.turns[1]))
    assert first < answer < second and text.endswith("<|im_start|>assistant\n")


def test_summary_numbers() -> None:
    from benchmarks.measure import RequestRecord, RunMeasurement, SpecCounters, summarize

    fast = RequestRecord(prompt_tokens=5, start=0.0, output_tokens=4, chunk_times=[0.1, 0.2, 0.4], end=0.4)
    slow = RequestRecord(prompt_tokens=7, start=0.0, output_tokens=2, chunk_times=[0.3, 0.5], end=1.0)
    before = SpecCounters(drafts=10, draft_tokens=30, accepted=5, accepted_per_pos=[4, 1, 0])
    after = SpecCounters(drafts=20, draft_tokens=60, accepted=20, accepted_per_pos=[12, 6, 2])
    row = summarize(RunMeasurement([fast, slow], duration_s=2.0, spec=after - before))
    assert row["output_tokens_per_s"] == pytest.approx(3.0)
    assert row["tau"] == pytest.approx(1 + 15 / 10)  # bonus token counted
    assert row["acceptance_rate_per_position"] == pytest.approx([0.8, 0.5, 0.2])
    assert row["ttft_ms"]["p50"] == pytest.approx(200.0)  # median of 100 and 300
    assert (row["itl_ms"]["p50"], row["itl_ms"]["mean"]) == pytest.approx((200.0, 1000 * 0.5 / 3))  # gaps 100, 200, 200
    assert row["request_latency_s"]["p99"] == pytest.approx(0.4 + 0.99 * 0.6)
    assert row["tpot_ms"]["mean"] == pytest.approx(1000 * (0.3 / 3 + 0.7 / 1) / 2)
    assert summarize(RunMeasurement([fast], 1.0, SpecCounters()))["tau"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mode", "pard2,bogus"], "unknown mode"),
        (["--mode", "eagle3"], "--eagle3-draft"),
        (["-k", "0", "--mode", "pard2"], "k >= 1"),
        (["--mode", "none,pard2:0"], "pard2_static:0"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["-b", "humaneval,squad"], "unknown benchmark"),
        (["-t", "/no/such/target", "-d", "/no/such/draft"], "no such directory"),
        (["--server", "localhost:8000"], "http(s) URL"),
        (["--server", "http://a", "--server", "http://b", "--mode", "pard2"], "as many --mode"),
    ],
)
def test_bad_arguments_fail_before_any_engine(argv, message, capsys) -> None:
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert time.monotonic() - started < 5


def test_static_and_adaptive_pard2_configs() -> None:
    """``pard2_static:0`` keeps K (the same engine as the other pard2 runs) and asks
    for 0 drafts at every batch size; ``pard2_static:K`` turns adaptive k off."""
    from benchmarks.inprocess import MethodSpec, speculative_config

    static0 = speculative_config(MethodSpec("pard2_static", 0), "D", None, None, k_max=8)
    assert static0 == {"model": "D", "method": "pard2", "num_speculative_tokens": 8,
                       "num_speculative_tokens_per_batch_size": [[1, 1, 0]]}  # fmt: skip
    static4 = speculative_config(MethodSpec("pard2_static", 4), "D", None, "target_independent", k_max=8)
    assert static4["num_speculative_tokens"] == 4 and static4["pard2_adaptive_k"] is False
    assert static4["pard2_mode"] == "target_independent"
    adaptive = speculative_config(MethodSpec("pard2", 8), "D", None, None, k_max=8)
    assert "pard2_adaptive_k" not in adaptive and "num_speculative_tokens_per_batch_size" not in adaptive
    assert MethodSpec("pard2_static", 0).label == "pard2 static k=0"
    assert MethodSpec("pard2", 8).label == "pard2 adaptive k<=8"
    args = parse_args(["--mode", "none,pard2,pard2_static:0,pard2_static:2"])
    assert [m.label for m in args.methods] == ["none", "pard2 adaptive k<=8", "pard2 static k=0", "pard2 static k=2"]


def test_default_pair_prefers_the_embedded_trained_pair(tmp_path, monkeypatch) -> None:
    from benchmarks import models

    embedded = tmp_path / "tiny_pard2"
    for name in ("target", "draft"):
        (embedded / name).mkdir(parents=True)
        (embedded / name / "config.json").write_text("{}")
    monkeypatch.setattr(models, "EMBEDDED_PAIR", embedded)
    target, draft, description = models.default_pair(tmp_path / "unused_cache")
    assert (target, draft) == (str(embedded / "target"), str(embedded / "draft"))
    assert "embedded" in description and not (tmp_path / "unused_cache").exists()


def test_in_process_benchmark(tiny_pair, tmp_path) -> None:
    out = tmp_path / "in_process"
    argv = [
        "-t", str(tiny_pair["target"]),
        "-d", str(tiny_pair["draft_copy"]),
        "-k", str(K),
        "--mode", f"none,pard2,pard2_static:{K}",
        "--dtype", "float32",
        "--enforce-eager",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
        *_common_args(out),
    ]  # fmt: skip
    assert bench_main(argv) == 0
    report = _load(out)
    assert "bonus token counted" in report["tau_definition"]
    assert report["meta"]["benchmarks"] == dict.fromkeys(BENCHMARKS, NUM_PROMPTS)
    rows = report["results"]
    assert len(rows) == 3 * len(BENCHMARKS) * len(BATCH_SIZES)
    by_key = {(r["method"], r["benchmark"], r["batch_size"]): r for r in rows}
    for (method, bench, batch), row in by_key.items():
        _check_common(row)
        baseline = by_key[("none", bench, batch)]
        assert row["speedup_vs_none"] == pytest.approx(row["output_tokens_per_s"] / baseline["output_tokens_per_s"])
        if method == "none":
            assert row["tau"] is None and row["num_drafts"] == 0
        elif method == "pard2_static":  # k = K every step
            assert row["k"] == K and row["method_label"] == f"pard2 static k={K}"
            _check_spec(row)
        else:  # adaptive k: how often it drafts depends on the step times it measures
            assert row["k"] == K and row["method_label"] == f"pard2 adaptive k<={K}"
            if row["num_drafts"]:
                assert row["tau"] == pytest.approx(1 + row["num_accepted_tokens"] / row["num_drafts"])
        # greedy and lossless: the same tokens as without speculation.
        assert row["output_tokens"] == baseline["output_tokens"]
    # One summary row per cell: adaptive against none and against the best static k (here the only one).
    summary = {(s["benchmark"], s["batch_size"]): s for s in report["adaptive_k_summary"]}
    assert len(summary) == len(BENCHMARKS) * len(BATCH_SIZES)
    for (bench, batch), s in summary.items():
        assert s["best_static"] == f"pard2 static k={K}"
        adaptive, static = by_key[("pard2", bench, batch)], by_key[("pard2_static", bench, batch)]
        ratio = adaptive["output_tokens_per_s"] / static["output_tokens_per_s"]
        assert s["adaptive_vs_best_static"] == pytest.approx(ratio)
    assert "adaptive / best static" in (out / "results.md").read_text()


def test_server_benchmark(tiny_pair, tmp_path) -> None:
    from server_utils import free_ports, launch, stop, wait_healthy

    # Fixed k: every cell must draft (adaptive k may choose 0 for a whole cell).
    spec = json.dumps(
        {
            "method": "pard2",
            "model": str(tiny_pair["draft_copy"]),
            "num_speculative_tokens": K,
            "pard2_adaptive_k": False,
        }
    )
    server = launch(
        "bench_pard2",
        tiny_pair["target"],
        free_ports(1)[0],
        tmp_path,
        ["--speculative-config", spec],
        max_model_len=MAX_MODEL_LEN,
        kv_cache_bytes=KV_CACHE_BYTES,
    )
    out = tmp_path / "server"
    try:
        wait_healthy(server, time.monotonic() + 240)
        argv = ["--server", server.base_url, "-t", str(tiny_pair["target"]), "--mode", "pard2", *_common_args(out)]
        assert bench_main(argv) == 0
    finally:
        stop(server)
    report = _load(out)
    assert report["meta"]["driver"].startswith("server")
    rows = report["results"]
    assert len(rows) == len(BENCHMARKS) * len(BATCH_SIZES)
    for row in rows:
        _check_common(row)
        _check_spec(row)
        assert row["speedup_vs_none"] is None  # no no-speculation server in this invocation


def test_interleaved_ratios_per_round_and_argument_errors(capsys) -> None:
    """``benchmarks.interleaved``: ratios to no speculation per round (median and
    pooled), outputs compared per round; no baseline or a bad mode fails at once."""
    from benchmarks import interleaved

    rounds = [
        {"seconds": {"none": 2.0, "pard2": 1.0}, "outputs": {"none": [[1, 2]], "pard2": [[1, 2]]}},
        {"seconds": {"none": 3.0, "pard2": 2.0}, "outputs": {"none": [[1, 2]], "pard2": [[1, 2]]}},
        {"seconds": {"none": 2.0, "pard2": 2.0}, "outputs": {"none": [[1, 2]], "pard2": [[1, 3]]}},
    ]
    summary = interleaved.summarize(rounds, "none")
    assert summary["pard2"]["median_ratio_vs_none"] == 1.5
    assert summary["pard2"]["pooled_ratio_vs_none"] == 7.0 / 5.0
    assert summary["pard2"]["identical_to_none"] is False and summary["none"]["identical_to_none"] is True
    orders = [interleaved.turn_order(["a", "b", "c"], turn) for turn in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    sequence = [name for order in orders for name in order]
    assert all(x != y for x, y in zip(sequence[:-1], sequence[1:], strict=True)), "an engine ran twice in a row"
    assert interleaved.turn_order(["a", "b"], 1) == ["a", "b"]
    args = interleaved.parse_args(["--mode", "none,pard2,pard2_static:0", "--batch-sizes", "16,1"])
    assert [m.label for m in args.methods] == ["none", "pard2 adaptive k<=8", "pard2 static k=0"]
    assert args.batch_sizes == [1, 16]
    for argv, message in ((["--mode", "pard2"], "must include none"), (["--mode", "none,pard3"], "unknown mode")):
        with pytest.raises(SystemExit):
            interleaved.parse_args(argv)
        assert message in capsys.readouterr().err


def test_interleaved_recipe_dir_gives_each_objective_its_drafter(tmp_path, capsys) -> None:
    """``--recipe-dir``: the recipe's target, and per method the drafter its objective
    trained (the speed-up ordering AR < PARD < PARD-2); a drafter the run needs but the
    directory lacks is an error before any engine starts."""
    from benchmarks import interleaved

    for name in ("target", "draft_ar", "draft_pard2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    args = interleaved.parse_args(["--recipe-dir", str(tmp_path), "--mode", "none,ar:4,pard2_static:4"])
    embedded = ("embedded/target", "embedded/draft")
    assert interleaved.models(args.recipe_dir, "ar", embedded) == (str(tmp_path / "target"), str(tmp_path / "draft_ar"))
    assert interleaved.models(args.recipe_dir, "pard2_static", embedded)[1] == str(tmp_path / "draft_pard2")
    assert interleaved.models(None, "ar", embedded) == embedded
    with pytest.raises(SystemExit):
        interleaved.parse_args(["--recipe-dir", str(tmp_path), "--mode", "none,pard:4"])
    assert "lacks draft_pard" in capsys.readouterr().err
