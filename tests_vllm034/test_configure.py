"""``Pard2SpeculatorConfig.configure`` through vLLM 0.34's own ``SpeculativeConfig``."""

from __future__ import annotations

import pytest
from vllm.config import ModelConfig

from vllm_pard2.checkpoint import read_pard2_spec
from vllm_pard2.proposer.target_features import plan_layers
from vllm_pard2.vllm034.config import AUX_LAYER_IDS_KEY, Pard2SpeculatorConfig

from conftest import speculative_config


def test_embedded_pair_auto_resolves_target_dependent(target_config, embedded):
    spec = speculative_config(target_config, model=embedded["draft"], num_speculative_tokens=3)
    assert spec.custom_method == "pard2"
    assert spec.method is None  # pard2 is not based on a built-in method
    assert type(spec.speculator_config) is Pard2SpeculatorConfig
    assert spec.speculator_options == {"pard2_mode": "target_dependent"}
    assert spec.uses_aux_hidden_states
    # The runner's capture ids (8 target layers): HF -1 -> after layer 8 (normed by pard2), HF -3 -> after layer 6.
    layers = read_pard2_spec(spec.draft_model_config.hf_config).target_layers
    assert layers == (-1, -3)
    expected = plan_layers(layers, target_config.hf_text_config.num_hidden_layers).aux_layer_ids
    assert getattr(spec.draft_model_config.hf_config, AUX_LAYER_IDS_KEY) == list(expected) == [6, 8]
    assert spec.draft_model_config.get_vocab_size() == target_config.get_vocab_size()


def test_lookahead_and_draft_sizing(target_config, embedded):
    spec = speculative_config(target_config, model=embedded["draft"], num_speculative_tokens=5)
    config = spec.speculator_config
    assert config.num_lookahead_tokens == 5  # bonus + 4 masks beyond the target's tokens
    assert config.parallel_drafting
    assert config.max_num_draft_seqs(2048) == 2048 // 11


def test_target_independent_on_request(target_config, embedded):
    spec = speculative_config(
        target_config,
        model=embedded["draft"],
        num_speculative_tokens=3,
        speculator_options={"pard2_mode": "target_independent"},
    )
    assert spec.speculator_options == {"pard2_mode": "target_independent"}
    assert not spec.uses_aux_hidden_states
    assert not hasattr(spec.draft_model_config.hf_config, AUX_LAYER_IDS_KEY)


def test_pard_draft_without_projection_falls_back_to_ti(tiny_pair):
    target = ModelConfig(model=str(tiny_pair["target"]), dtype="float32")
    spec = speculative_config(target, model=tiny_pair["draft_qwen3"], num_speculative_tokens=2)
    assert spec.speculator_options == {"pard2_mode": "target_independent"}
    assert not spec.uses_aux_hidden_states


def test_tiny_td_draft_with_bias_resolves_td(tiny_pair):
    target = ModelConfig(model=str(tiny_pair["target"]), dtype="float32")
    spec = speculative_config(
        target,
        model=tiny_pair["draft_td"],
        num_speculative_tokens=4,
        speculator_options={"pard2_mode": "target_dependent"},
    )
    layers = read_pard2_spec(spec.draft_model_config.hf_config).target_layers
    num_layers = target.hf_text_config.num_hidden_layers
    assert spec.speculator_options["pard2_mode"] == "target_dependent"
    assert getattr(spec.draft_model_config.hf_config, AUX_LAYER_IDS_KEY) == list(
        plan_layers(layers, num_layers).aux_layer_ids
    )


@pytest.mark.parametrize("k", [1, 8])
def test_num_speculative_tokens_kept(target_config, embedded, k):
    spec = speculative_config(target_config, model=embedded["draft"], num_speculative_tokens=k)
    assert spec.num_speculative_tokens == k


def test_user_request_through_engine_args(target_config, embedded):
    """The front end's own path: ``EngineArgs.create_speculative_config`` with the
    CLI alias flags and ``speculator_options`` from the JSON config."""
    from vllm.config import ParallelConfig
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(
        model=str(embedded["target"]),
        spec_method="pard2",
        spec_model=str(embedded["draft"]),
        spec_tokens=4,
        speculative_config={"speculator-options": {"pard2_mode": "target_independent"}},
    )
    spec = args.create_speculative_config(target_config, ParallelConfig())
    assert spec.custom_method == "pard2" and spec.num_speculative_tokens == 4
    assert spec.speculator_options == {"pard2_mode": "target_independent"}


def test_top_level_pard2_mode_is_not_a_vllm_034_key(target_config, embedded):
    """vLLM 0.34 has no hook for extra top-level keys: pard2's options live in
    ``speculator_options`` there (docs/vllm034.md)."""
    with pytest.raises(Exception, match="pard2_mode"):
        speculative_config(target_config, model=embedded["draft"], num_speculative_tokens=3, pard2_mode="auto")
