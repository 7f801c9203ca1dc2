"""``register()`` picks the 0.34 adapter and registers pard2 through vLLM's API."""

from __future__ import annotations

import pytest
import vllm
from vllm.v1.worker.gpu.spec_decode.speculator import BaseSpeculator
from vllm.v1.worker.gpu.spec_decode.speculator_config import (
    get_custom_speculator_config_class,
    registered_speculative_methods,
)

import vllm_pard2
from vllm_pard2.config import check_vllm_version
from vllm_pard2.vllm034.config import Pard2SpeculatorConfig


def test_lane_runs_vllm_034():
    assert vllm.__version__.startswith("0.34."), vllm.__version__
    assert check_vllm_version(vllm.__version__) == "0.34."


def test_entry_point_registers_pard2():
    assert "pard2" in registered_speculative_methods()
    assert get_custom_speculator_config_class("pard2") is Pard2SpeculatorConfig


def test_register_is_idempotent():
    """vLLM calls the entry point in every process, possibly more than once."""
    vllm_pard2.register()
    vllm_pard2.register()
    assert registered_speculative_methods() == ["pard2"]
    assert get_custom_speculator_config_class("pard2") is Pard2SpeculatorConfig


def test_no_vllm_internal_is_patched():
    """On 0.34 the plugin only registers: vLLM's config entry points are its own."""
    from vllm.config.speculative import SpeculativeConfig
    from vllm.engine.arg_utils import EngineArgs

    vllm_pard2.register()
    assert EngineArgs.create_speculative_config.__module__ == "vllm.engine.arg_utils"
    assert SpeculativeConfig.__post_init__.__module__ == "vllm.config.speculative"


def test_speculator_class_is_an_mrv2_speculator():
    """The named speculator imports (GPU-free) and implements the MRV2 interface;
    it has never run (docs/vllm034.md)."""
    from vllm.utils.import_utils import resolve_obj_by_qualname

    cls = resolve_obj_by_qualname(Pard2SpeculatorConfig.speculator_class)
    assert issubclass(cls, BaseSpeculator)
    assert not cls.__abstractmethods__


@pytest.mark.parametrize("version", ["0.33.0", "0.31.2", "0.35.0"])
def test_other_versions_are_refused_naming_the_supported_ones(version):
    with pytest.raises(
        RuntimeError, match=rf"supports vLLM 0\.32\.x and 0\.34\.x only, but vLLM {version} is installed"
    ):
        check_vllm_version(version)
