"""vllm-pard2: PARD-2 parallel-draft speculative decoding as a vLLM 0.32 plugin.

Installed, it registers ``method: "pard2"`` through the ``vllm.general_plugins``
entry point (``register`` below), which vLLM calls in every process it starts.
"""

from __future__ import annotations

__version__ = "0.1.0"


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def register() -> None:
    """Entry point: make ``method: "pard2"`` available in this process.

    On a vLLM other than 0.32.x nothing is patched; asking for pard2 then fails
    with a message naming the supported version instead of misbehaving.
    """
    from vllm_pard2 import patches
    from vllm_pard2.config import check_vllm_version

    try:
        check_vllm_version(vllm_version())
    except RuntimeError as err:
        patches.refuse_pard2(str(err))
        return
    patches.apply_all()
