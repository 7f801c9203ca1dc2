"""Bad pard2 configs fail before any engine process starts, naming the fix.

``LLM(...)`` builds its config in the calling process; every error here is
raised there, so each test takes seconds, not an engine start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from vllm_pard2.config import Pard2ConfigError, check_vllm_version

from conftest import engine_kwargs


def build_llm(target, spec: dict | None, **aliases):
    from vllm import LLM

    return LLM(model=str(target), speculative_config=spec, **aliases, **engine_kwargs())


def expect_error(target, spec: dict | None, *fragments: str, error=Pard2ConfigError, **aliases) -> str:
    start = time.monotonic()
    with pytest.raises(error) as info:
        build_llm(target, spec, **aliases)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert time.monotonic() - start < 60, "the error must come before an engine start"
    return message


def spec(draft, **extra) -> dict:
    return {"method": "pard2", "model": str(draft), "num_speculative_tokens": 4, **extra}


@pytest.fixture(scope="module")
def bad_drafts(tiny_pair, tmp_path_factory):
    """Variants of a valid draft, each broken in one way."""
    root = tmp_path_factory.mktemp("bad_drafts")
    good = tiny_pair["draft_qwen3"]

    def variant(name: str, edit) -> str:
        path = root / name
        shutil.copytree(good, path)
        cfg = json.loads((path / "config.json").read_text())
        edit(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
        return str(path)

    def bigger_vocab(cfg):
        cfg["vocab_size"] = cfg["vocab_size"] + 64

    return {
        "no_pard_token": variant("no_pard_token", lambda c: c.pop("pard_token")),
        "pard_token_out_of_range": variant("oor", lambda c: c.update(pard_token=c["vocab_size"] + 5)),
        "vocab_mismatch": _resized_vocab_draft(root / "vocab_mismatch", good),
        "no_config": str(root / "empty_dir"),
    }


def _resized_vocab_draft(path, good) -> str:
    """A real checkpoint whose vocabulary is larger than the target's."""
    from transformers import AutoTokenizer

    from vllm_pard2.tiny_pair import DRAFT_SHAPES, random_model, save_model

    tok = AutoTokenizer.from_pretrained(good)
    model = random_model(DRAFT_SHAPES["qwen3"], 1088, tok.eos_token_id, tok.pad_token_id, seed=7)
    save_model(model, tok, path, {"pard_token": 3})
    return str(path)


def test_missing_draft_path(tiny_pair):
    expect_error(tiny_pair["target"], spec("/nonexistent/pard2-draft"), "/nonexistent/pard2-draft", "not found")


def test_draft_dir_without_config(tiny_pair, bad_drafts):
    os.makedirs(bad_drafts["no_config"], exist_ok=True)
    expect_error(tiny_pair["target"], spec(bad_drafts["no_config"]), "has no config.json")


def test_draft_without_pard_token(tiny_pair, bad_drafts):
    expect_error(tiny_pair["target"], spec(bad_drafts["no_pard_token"]), "no 'pard_token'", '"pard_token"')


def test_pard_token_outside_vocabulary(tiny_pair, bad_drafts):
    expect_error(
        tiny_pair["target"],
        spec(bad_drafts["pard_token_out_of_range"]),
        "pard_token=1029",
        "outside the draft vocabulary [0, 1024)",
    )


def test_vocabulary_size_mismatch(tiny_pair, bad_drafts):
    expect_error(
        tiny_pair["target"], spec(bad_drafts["vocab_mismatch"]), "vocab_size=1088", "vocab_size=1024", "same vocabulary"
    )


@pytest.mark.parametrize("k", [0, -2])
def test_num_speculative_tokens_below_one(tiny_pair, k):
    expect_error(
        tiny_pair["target"],
        spec(tiny_pair["draft_qwen3"], num_speculative_tokens=k),
        "must be an integer >= 1",
        repr(k),
    )


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ([[2, 8, 4]], "must start at 1"),
        ([[1, 8, -1]], "must be >= 0"),
        ([[1, 8]], "entry must be"),
        ([[1, 8, 2], [5, 64, 0]], "non-overlapping"),
    ],
)
def test_bad_batch_size_schedule(tiny_pair, schedule, fragment):
    expect_error(
        tiny_pair["target"],
        spec(tiny_pair["draft_qwen3"], num_speculative_tokens_per_batch_size=schedule),
        "'num_speculative_tokens_per_batch_size'",
        fragment,
    )


def test_num_speculative_tokens_missing(tiny_pair):
    bad = {"method": "pard2", "model": str(tiny_pair["draft_qwen3"])}
    expect_error(tiny_pair["target"], bad, "needs 'num_speculative_tokens'")


def test_unknown_key(tiny_pair):
    message = expect_error(
        tiny_pair["target"],
        spec(tiny_pair["draft_qwen3"], num_speculativ_tokens=3),
        "Unknown key(s)",
        "'num_speculativ_tokens'",
    )
    assert "did you mean 'num_speculative_tokens'" in message


def test_parallel_drafting_false_rejected(tiny_pair):
    expect_error(
        tiny_pair["target"], spec(tiny_pair["draft_qwen3"], parallel_drafting=False), "always drafts in parallel"
    )


def test_heterogeneous_vocabulary_rejected(tiny_pair):
    expect_error(
        tiny_pair["target"],
        spec(tiny_pair["draft_qwen3"], use_heterogeneous_vocab=True),
        "share one vocabulary",
        "remove 'use_heterogeneous_vocab'",
    )


ALIAS_CASES = {
    "missing_draft": lambda drafts, good: {"model": "/nonexistent/pard2-draft", "num_speculative_tokens": 4},
    "k_missing": lambda drafts, good: {"model": good},
    "k_zero": lambda drafts, good: {"model": good, "num_speculative_tokens": 0},
    "bad_mode": lambda drafts, good: {"model": good, "num_speculative_tokens": 4, "pard2_mode": "td"},
    "unknown_key": lambda drafts, good: {"model": good, "num_speculative_tokens": 4, "num_speculativ_tokens": 3},
    "no_pard_token": lambda drafts, good: {"model": drafts["no_pard_token"], "num_speculative_tokens": 4},
    "vocab_mismatch": lambda drafts, good: {"model": drafts["vocab_mismatch"], "num_speculative_tokens": 4},
}


@pytest.mark.parametrize("case", sorted(ALIAS_CASES))
def test_alias_flags_give_the_same_errors(tiny_pair, bad_drafts, case):
    """``LLM(spec_method="pard2", spec_model=..., spec_tokens=...)`` (the
    ``--spec-*`` flags) is checked exactly like the speculative_config dict."""
    request = ALIAS_CASES[case](bad_drafts, str(tiny_pair["draft_qwen3"]))
    from_dict = expect_error(tiny_pair["target"], {"method": "pard2", **request})
    rest = {k: v for k, v in request.items() if k not in ("model", "num_speculative_tokens")}
    aliases = {"spec_method": "pard2", "spec_model": request["model"]}
    aliases["spec_tokens"] = request.get("num_speculative_tokens")
    assert expect_error(tiny_pair["target"], rest or None, **aliases) == from_dict


def test_other_methods_still_validated(tiny_pair):
    """Extending the method Literal must not let arbitrary names through."""
    with pytest.raises(Exception, match="pard3"):
        build_llm(
            tiny_pair["target"],
            {"method": "pard3", "model": str(tiny_pair["draft_qwen3"]), "num_speculative_tokens": 2},
        )


def test_unsupported_vllm_version_message():
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.x and 0\.34\.x only, but vLLM 0\.33\.1 is installed"):
        check_vllm_version("0.33.1")
    check_vllm_version("0.32.0")


def test_cli_rejects_bad_config_before_engine_start(tiny_pair):
    """The CLI JSON path (`vllm-pard2 serve`) reports the same message and exits."""
    bad = json.dumps({"method": "pard2", "model": "/nonexistent/draft", "num_speculative_tokens": 4})
    cmd = [
        sys.executable,
        "-m",
        "vllm_pard2.cli",
        "serve",
        str(tiny_pair["target"]),
        "--speculative-config",
        bad,
        "--port",
        "0",
        "--dtype",
        "float32",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    assert "pard2 draft model '/nonexistent/draft' not found" in proc.stderr + proc.stdout
    assert "Starting engine" not in proc.stderr + proc.stdout
