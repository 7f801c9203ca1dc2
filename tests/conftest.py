"""Shared fixtures: one tiny model pair per session, engines started sparingly.

Each vLLM engine start costs ~30 s on CPU, so engines are module- or
session-scoped and every test engine gets an explicit small KV-cache budget.
"""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Per-engine KV budget: tiny models need a few MiB; two engines may be alive.
KV_CACHE_BYTES = 64 << 20
MAX_MODEL_LEN = 256


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, Path]:
    from vllm_pard2.tiny_pair import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(scope="session")
def prompts(tiny_pair) -> list[list[int]]:
    from engines import make_prompts

    return make_prompts(tiny_pair["target"])


@pytest.fixture(scope="session")
def baseline(tiny_pair, prompts):
    """No-speculation results of every scenario in ``engines.run_engine``."""
    from engines import run_engine

    return run_engine(tiny_pair["target"], prompts, spec=None, enable_prefix_caching=True)


def engine_kwargs(**overrides) -> dict:
    """Settings shared by every test engine: exact float32 greedy, small memory."""
    kwargs = dict(
        dtype="float32",
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        max_model_len=MAX_MODEL_LEN,
        enforce_eager=True,
        seed=0,
        disable_log_stats=False,
    )
    kwargs.update(overrides)
    return kwargs


def shutdown(llm) -> None:
    """Stop an LLM's engine processes now rather than at interpreter exit."""
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
