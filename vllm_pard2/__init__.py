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

    The adapter follows the installed vLLM: 0.32.x gets the V1 runner patches
    (``vllm_pard2.patches``); 0.34.x registers pard2 through vLLM's speculator
    plugin API (``vllm_pard2.vllm034``), patching nothing. On any other vLLM
    nothing is patched; asking for pard2 then fails with a message naming the
    supported versions instead of misbehaving.
    """
    from vllm_pard2.config import check_vllm_version

    try:
        series = check_vllm_version(vllm_version())
    except RuntimeError as err:
        from vllm_pard2 import patches

        patches.refuse_pard2(str(err))
        return
    if series == "0.34.":
        from vllm_pard2 import vllm034

        vllm034.register()
        return
    from vllm_pard2 import patches

    patches.apply_all()
