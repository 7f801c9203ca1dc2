"""pard2 passes vLLM's config validation and lands on the V1 model runner.

Config is built in-process exactly as ``LLM``/``vllm serve`` build it
(``EngineArgs.create_engine_config``); no engine starts here.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from vllm_pard2.config import Pard2ConfigError


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
    VLLM_USE_V2_MODEL_RUNNER=1 asks otherwise (set after building here; see
    the next test for a config built under the variable)."""
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


def _record_runner_validation(monkeypatch) -> list[str]:
    """Which runner's validation ``VllmConfig.__post_init__`` runs (vLLM's own
    methods, called through)."""
    from vllm.config.vllm import VllmConfig

    validated: list[str] = []
    for runner in ("v1", "v2"):
        name = f"_validate_{runner}_model_runner"
        original = getattr(VllmConfig, name)

        def record(self, _original=original, _runner=runner):
            validated.append(_runner)
            return _original(self)

        monkeypatch.setattr(VllmConfig, name, record)
    return validated


def test_v2_variable_still_configures_for_v1(tiny_pair, monkeypatch):
    """With VLLM_USE_V2_MODEL_RUNNER=1 the V1 runner is built for pard2, and
    post-init (which sees pard2 as draft_model) configures for V1 too: V1
    validation, and the scheduling and CUDA-graph choices of a run without
    the variable."""
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    plain = engine_config(tiny_pair["target"], tiny_pair["draft_qwen3"])
    validated = _record_runner_validation(monkeypatch)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    config = engine_config(tiny_pair["target"], tiny_pair["draft_qwen3"])
    assert validated and set(validated) == {"v1"}
    assert config.use_v2_model_runner is False
    for view in (
        lambda c: c.scheduler_config.async_scheduling,
        lambda c: c.max_concurrent_batches,
        lambda c: c.compilation_config.mode,
        lambda c: c.compilation_config.cudagraph_mode,
        lambda c: c.compilation_config.cudagraph_capture_sizes,
        lambda c: c.parallel_config.disable_nccl_for_dp_synchronization,
        lambda c: c.speculative_config.compute_hash(),
    ):
        assert view(config) == view(plain)
    # The variable is read: the in-tree draft_model path configures for V2
    # (and on a CPU without Triton, refuses it).
    validated.clear()
    spec = {"method": "draft_model", "model": str(tiny_pair["draft_qwen3"]), "num_speculative_tokens": 2}
    with contextlib.suppress(Exception):
        EngineArgs(model=str(tiny_pair["target"]), speculative_config=spec, max_model_len=256).create_engine_config()
    assert "v2" in validated


def test_v2_variable_keeps_v1_limits(tiny_pair, monkeypatch):
    """A feature the V1 runner lacks is refused up front under
    VLLM_USE_V2_MODEL_RUNNER=1 too, because V1 is what runs."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="Model Runner V1 does not support: adaptive draft verification"):
        engine_config(tiny_pair["target"], tiny_pair["draft_qwen3"], enable_adaptive_verification=True)


def _fields(spec) -> dict:
    """A built SpeculativeConfig as comparable values (nested configs by hash)."""
    out = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        out[field.name] = value.compute_hash() if hasattr(value, "compute_hash") else value
    return out


def test_alias_flags_equal_the_dict_config(tiny_pair):
    """--spec-method/--spec-model/--spec-tokens (and LLM(spec_method=...))
    get pard2's checks and defaults: the same config as the JSON dict."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    target, draft = str(tiny_pair["target"]), str(tiny_pair["draft_td"])
    common = dict(model=target, dtype="float32", max_model_len=256)
    as_dict = engine_config(target, draft).speculative_config
    flags = EngineArgs(spec_method="pard2", spec_model=draft, spec_tokens=6, **common)
    mixed = EngineArgs(spec_method="pard2", speculative_config={"model": draft, "num_speculative_tokens": 6}, **common)
    argv = ["--model", target, "--dtype", "float32", "--max-model-len", "256"]
    argv += ["--spec-method", "pard2", "--spec-model", draft, "--spec-tokens", "6"]
    cli = EngineArgs.from_cli_args(EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(argv))
    assert as_dict.draft_sample_method == "probabilistic"  # pard2's default
    assert as_dict.pard2_mode == "target_dependent"  # resolved by pard2's mode choice
    for args in (flags, mixed, cli):
        assert _fields(args.create_engine_config().speculative_config) == _fields(as_dict)


def _model_config_with_vocab(source, vocab_size: int, out):
    """A ModelConfig of ``source`` with another vocab_size (config only: no weights are read)."""
    import json
    import shutil

    from vllm.config import ModelConfig

    shutil.copytree(source, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": vocab_size}))
    return ModelConfig(model=str(out), dtype="float32", max_model_len=256)


def test_vllm_vocabulary_check_runs_for_pard2(tiny_pair, tmp_path):
    """vLLM's ``verify_equal_vocab_size_if_draft_model`` (run by the config
    validator and again by ``DraftModelProposer`` in the worker) compares the
    method with "draft_model"; it runs for pard2 as well."""
    from pydantic import ValidationError
    from vllm.config import ParallelConfig
    from vllm.config.speculative import SpeculativeConfig

    bigger = _model_config_with_vocab(tiny_pair["target"], 1088, tmp_path / "target_1088")
    spec = engine_config(tiny_pair["target"], tiny_pair["draft_qwen3"]).speculative_config
    spec.verify_equal_vocab_size_if_draft_model()  # matching pair: passes
    # The validator, with the config built directly (not through EngineArgs).
    with pytest.raises(ValidationError, match=r"vocab_size=1024 but the target has vocab_size=1088"):
        SpeculativeConfig(
            method="pard2",
            model=str(tiny_pair["draft_qwen3"]),
            num_speculative_tokens=2,
            target_model_config=bigger,
            target_parallel_config=ParallelConfig(),
        )
    # The worker's call, on a config whose target changed after validation.
    spec.target_model_config = bigger
    with pytest.raises(Pard2ConfigError, match="same vocabulary"):
        spec.verify_equal_vocab_size_if_draft_model()
