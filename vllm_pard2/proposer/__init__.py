"""The PARD-2 proposer plugged into vLLM's V1 spec-decode path.

``Pard2Proposer`` (vLLM 0.32 only) is imported on first use, so the
version-independent modules here (``target_features``) also import on vLLM 0.34,
where the V1 ``DraftModelProposer`` it subclasses no longer exists.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Pard2Proposer"]


def __getattr__(name: str) -> Any:
    if name == "Pard2Proposer":
        from vllm_pard2.proposer.pard2_proposer import Pard2Proposer

        return Pard2Proposer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
