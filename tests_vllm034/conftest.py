"""Fixtures for the vLLM 0.34 lane (config level; run in .venv034, see .ci/lane_vllm034.sh).

vLLM 0.34 has no CPU runner here, so these tests build vLLM's own config objects
(``ModelConfig``, ``SpeculativeConfig``) on tiny checkpoints, as vLLM's config
tests do, and never start an engine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EMBEDDED = Path(__file__).resolve().parents[1] / "vllm_pard2" / "assets" / "tiny_pard2"


@pytest.fixture(scope="session", autouse=True)
def pard2_registered() -> None:
    """Load vLLM's general plugins, as every vLLM process does: the installed
    ``vllm.general_plugins`` entry point calls ``vllm_pard2.register``."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()


@pytest.fixture(scope="session")
def embedded() -> dict[str, Path]:
    return {"target": EMBEDDED / "target", "draft": EMBEDDED / "draft"}


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, Path]:
    from vllm_pard2.tiny_pair import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(scope="session")
def target_config(embedded):
    from vllm.config import ModelConfig

    return ModelConfig(model=str(embedded["target"]), dtype="float32")


def speculative_config(target_config, **spec):
    from vllm.config import ParallelConfig, SpeculativeConfig

    spec = {"method": "pard2", **spec}
    spec["model"] = str(spec["model"])
    return SpeculativeConfig(**spec, target_model_config=target_config, target_parallel_config=ParallelConfig())


def edited_draft(src: Path, dst: Path, **changes) -> Path:
    """A copy of a draft checkpoint with config.json keys changed (None: removed)."""
    shutil.copytree(src, dst)
    config_path = dst / "config.json"
    config = json.loads(config_path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config))
    return dst
