"""The PARD-2 proposer plugged into vLLM's V1 spec-decode path."""

from vllm_pard2.proposer.pard2_proposer import Pard2Proposer

__all__ = ["Pard2Proposer"]
