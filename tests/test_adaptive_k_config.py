"""Adaptive k config: on by default for pard2, off by key or by a user schedule,
bad values refused before any engine starts. No engine starts here: configs are
built in-process as ``LLM``/``vllm serve`` build them."""

from __future__ import annotations

import pytest

from vllm_pard2.config import Pard2ConfigError

K = 4


def engine_config(target, spec: dict):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(
        model=str(target), speculative_config=spec, dtype="float32", max_model_len=256
    ).create_engine_config()


def pard2(tiny_pair, **extra) -> dict:
    return {"method": "pard2", "model": str(tiny_pair["draft_qwen3"]), "num_speculative_tokens": K, **extra}


def test_on_by_default_and_run_as_dynamic_speculation(tiny_pair):
    """vLLM sees a per-step k (one range of K): the scheduler's lookup exists, so no
    full-graph decode padding, and every later step can be given any k <= K."""
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    spec = engine_config(tiny_pair["target"], pard2(tiny_pair)).speculative_config
    assert spec.pard2_adaptive_k is True
    assert spec.uses_dynamic_speculative_decoding()
    dense = build_dynamic_sd_schedule_lookup(spec.num_speculative_tokens_per_batch_size, 64, K)
    assert dense[1:] == [K] * 64


def test_off_by_key(tiny_pair):
    spec = engine_config(tiny_pair["target"], pard2(tiny_pair, pard2_adaptive_k=False)).speculative_config
    assert spec.pard2_adaptive_k is False
    assert spec.num_speculative_tokens_per_batch_size is None
    assert not spec.uses_dynamic_speculative_decoding()


def test_off_by_user_schedule(tiny_pair):
    schedule = [[1, 4, 4], [5, 1024, 0]]
    spec = engine_config(
        tiny_pair["target"], pard2(tiny_pair, num_speculative_tokens_per_batch_size=schedule)
    ).speculative_config
    assert spec.pard2_adaptive_k is False
    assert [list(r) for r in spec.num_speculative_tokens_per_batch_size] == schedule


def test_explicit_true_is_the_default(tiny_pair):
    spec = engine_config(tiny_pair["target"], pard2(tiny_pair, pard2_adaptive_k=True)).speculative_config
    assert spec.pard2_adaptive_k is True


@pytest.mark.parametrize("value", ["yes", "true", "false", "on", 1, 0])
def test_non_boolean_values_refused(tiny_pair, value):
    with pytest.raises(Pard2ConfigError, match="pard2_adaptive_k must be true or false"):
        engine_config(tiny_pair["target"], pard2(tiny_pair, pard2_adaptive_k=value))


def test_true_with_a_user_schedule_refused(tiny_pair):
    spec = pard2(tiny_pair, pard2_adaptive_k=True, num_speculative_tokens_per_batch_size=[[1, 8, 2]])
    with pytest.raises(Pard2ConfigError, match="conflicts with 'num_speculative_tokens_per_batch_size'"):
        engine_config(tiny_pair["target"], spec)


def test_other_methods_refuse_the_key(tiny_pair):
    spec = {"method": "draft_model", "model": str(tiny_pair["draft_qwen3"]), "num_speculative_tokens": 2}
    with pytest.raises(Pard2ConfigError, match="'pard2_adaptive_k' applies to method 'pard2' only"):
        engine_config(tiny_pair["target"], {**spec, "pard2_adaptive_k": False})


def test_llm_refuses_a_bad_value_before_the_engine_starts(tiny_pair):
    """The same check on the ``LLM(...)`` path (tests/test_bad_inputs.py style)."""
    import time

    from vllm import LLM

    from conftest import engine_kwargs

    start = time.monotonic()
    with pytest.raises(Pard2ConfigError, match="pard2_adaptive_k"):
        LLM(
            model=str(tiny_pair["target"]),
            speculative_config=pard2(tiny_pair, pard2_adaptive_k="no"),
            **engine_kwargs(),
        )
    assert time.monotonic() - start < 60
