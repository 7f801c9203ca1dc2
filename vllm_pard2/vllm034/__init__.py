"""The vLLM 0.34 adapter: ``method: "pard2"`` through vLLM's speculator plugin API.

vLLM 0.34 removed the V1 runner's speculative decoding that the 0.32 adapter
(``vllm_pard2.patches``, ``vllm_pard2.proposer``) rides on, and added
``register_speculative_method``. Here pard2 is a registered ``SpeculatorConfig``
(``config.py``, imported in every process) naming a Model Runner V2 speculator
(``speculator.py``, GPU workers only; its CUDA-graph buffers in ``cudagraph.py``).
No vLLM internal is patched.

The MRV2 speculator has not run yet: vLLM 0.34 runs only on a GPU here (see
docs/vllm034.md). The config layer is tested on CPU (tests_vllm034/).
"""

from __future__ import annotations

CONFIG_QUALNAME = "vllm_pard2.vllm034.config.Pard2SpeculatorConfig"


def register() -> None:
    """Register ``"pard2"`` with vLLM 0.34, unless this vLLM already has a
    built-in or registered ``pard2`` (then it is vLLM's, and left alone)."""
    from typing import get_args

    from vllm.config.speculative import SpeculativeMethod
    from vllm.v1.worker.gpu.spec_decode.speculator_config import (
        register_speculative_method,
        registered_speculative_methods,
    )

    from vllm_pard2.config import PARD2_METHOD

    if PARD2_METHOD in get_args(SpeculativeMethod) or PARD2_METHOD in registered_speculative_methods():
        return
    register_speculative_method(PARD2_METHOD, CONFIG_QUALNAME)
