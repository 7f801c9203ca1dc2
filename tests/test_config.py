"""pard2 passes vLLM's config validation and lands on the V1 model runner.

Config is built in-process exactly as ``LLM``/``vllm serve`` build it
(``EngineArgs.create_engine_config``); no engine starts here.
"""

from __future__ import annotations


def engine_config(target, draft, **spec_extra):
    from vllm.engine.arg_utils import EngineArgs

    spec = {"method": "pard2", "model": str(draft), "num_speculative_tokens": 6, **spec_extra}
    args = EngineArgs(model=str(target), speculative_config=spec, dtype="float32", max_model_len=256)
    return args.create_engine_config()


def test_pard2_config_rides_on_parallel_draft_model(tiny_pair):
    config = engine_config(tiny_pair["target"], tiny_pair["draft_qwen3"])
    spec = config.speculative_config
    assert spec.method == "pard2"
    assert spec.parallel_drafting is True
    assert spec.uses_draft_model() and spec.uses_draft_kv_cache()
    assert spec.max_num_new_slots_for_drafting == 6  # PARD: k extra slots, no shift
    assert config.num_lookahead_tokens == 6
    assert spec.draft_model_config.hf_config.pard_token == 3


def test_dash_keys_from_cli_json_accepted(tiny_pair):
    from vllm.engine.arg_utils import EngineArgs

    spec = {"method": "pard2", "model": str(tiny_pair["draft_qwen3"]), "num-speculative-tokens": 2}
    config = EngineArgs(
        model=str(tiny_pair["target"]), speculative_config=spec, max_model_len=256
    ).create_engine_config()
    assert config.speculative_config.num_speculative_tokens == 2


def test_v1_model_runner_forced_for_pard2(tiny_pair, monkeypatch):
    """Model Runner V2 would draft autoregressively; pard2 stays on V1 even when
    VLLM_USE_V2_MODEL_RUNNER=1 asks otherwise. (On CPU vLLM refuses that
    variable while building a config, so it is set after.)"""
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    pard2 = engine_config(tiny_pair["target"], tiny_pair["draft_qwen3"])
    spec = {"method": "draft_model", "model": str(tiny_pair["draft_qwen3"]), "num_speculative_tokens": 2}
    in_tree = EngineArgs(model=str(tiny_pair["target"]), speculative_config=spec, max_model_len=256)
    in_tree = in_tree.create_engine_config()
    assert pard2.use_v2_model_runner is False
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert in_tree.use_v2_model_runner is True, "the variable is read (the guard is not vacuous)"
    assert pard2.use_v2_model_runner is False


def test_other_methods_unaffected(tiny_pair):
    """The in-tree draft_model path keeps its own method and proposer class."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.spec_decode.draft_model import DraftModelProposer

    spec = {"method": "draft_model", "model": str(tiny_pair["draft_qwen3"]), "num_speculative_tokens": 2}
    config = EngineArgs(
        model=str(tiny_pair["target"]), speculative_config=spec, max_model_len=256
    ).create_engine_config()
    assert config.speculative_config.method == "draft_model"
    assert config.speculative_config.parallel_drafting is False
    assert DraftModelProposer.__new__(DraftModelProposer, config).__class__ is DraftModelProposer
