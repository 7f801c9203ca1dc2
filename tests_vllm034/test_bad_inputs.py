"""Every bad pard2 request fails while vLLM 0.34 builds its config, naming the fix."""

from __future__ import annotations

import pytest
from vllm.config import ModelConfig

from conftest import edited_draft, speculative_config


def expect_error(match: str, target_config, **spec):
    with pytest.raises(Exception, match=match):
        speculative_config(target_config, **spec)


def test_unknown_option_gets_a_hint(target_config, embedded):
    expect_error(
        r"Unknown key\(s\).*'pard2_mod' \(did you mean 'pard2_mode'\?\)",
        target_config,
        model=embedded["draft"],
        num_speculative_tokens=3,
        speculator_options={"pard2_mod": "auto"},
    )


def test_bad_mode_value(target_config, embedded):
    expect_error(
        "pard2_mode must be one of",
        target_config,
        model=embedded["draft"],
        num_speculative_tokens=3,
        speculator_options={"pard2_mode": "fast"},
    )


def test_parallel_drafting_flag_is_refused(target_config, embedded):
    expect_error(
        "pard2 always drafts in parallel",
        target_config,
        model=embedded["draft"],
        num_speculative_tokens=3,
        parallel_drafting=True,
    )


def test_missing_num_speculative_tokens(target_config, embedded):
    expect_error("pard2 needs 'num_speculative_tokens'", target_config, model=embedded["draft"])


def test_zero_speculative_tokens(target_config, embedded):
    expect_error("num_speculative_tokens", target_config, model=embedded["draft"], num_speculative_tokens=0)


def test_missing_draft_directory(target_config, tmp_path):
    expect_error("draft model .* not found", target_config, model=tmp_path / "no_such_draft", num_speculative_tokens=3)


def test_draft_directory_without_config(target_config, tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error("has no config.json", target_config, model=tmp_path / "empty", num_speculative_tokens=3)


def test_draft_without_pard_token(target_config, embedded, tmp_path):
    draft = edited_draft(embedded["draft"], tmp_path / "d", pard_token=None)
    expect_error("has no 'pard_token'", target_config, model=draft, num_speculative_tokens=3)


def test_pard_token_outside_vocabulary(target_config, embedded, tmp_path):
    draft = edited_draft(embedded["draft"], tmp_path / "d", pard_token=10**6)
    expect_error("outside the draft vocabulary", target_config, model=draft, num_speculative_tokens=3)


def test_vocabulary_mismatch(target_config, embedded, tmp_path):
    draft = edited_draft(embedded["draft"], tmp_path / "d", vocab_size=4096)
    expect_error(
        r"vocab_size=4096 but the target has\s+vocab_size=2048", target_config, model=draft, num_speculative_tokens=3
    )


def test_forced_td_without_projection(tiny_pair):
    target = ModelConfig(model=str(tiny_pair["target"]), dtype="float32")
    expect_error(
        "pard2_mode 'target_dependent' is impossible.*pard2_target_layers.*no target projection file",
        target,
        model=tiny_pair["draft_qwen3"],
        num_speculative_tokens=3,
        speculator_options={"pard2_mode": "target_dependent"},
    )


def test_forced_td_with_wrong_target_dim(target_config, embedded, tmp_path):
    draft = edited_draft(embedded["draft"], tmp_path / "d", pard2_target_dim=256)
    expect_error(
        "pard2_target_dim is 256 but 2 target layers",
        target_config,
        model=draft,
        num_speculative_tokens=3,
        speculator_options={"pard2_mode": "target_dependent"},
    )


def test_unknown_method_lists_pard2(target_config, embedded):
    expect_error(
        r"Unknown speculative method 'pard3'.*registered custom methods: \['pard2'\]",
        target_config,
        method="pard3",
        model=embedded["draft"],
        num_speculative_tokens=3,
    )
