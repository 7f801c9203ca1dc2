"""Step-level scheduling policies for pard2 (batch-aware k)."""

from vllm_pard2.schedule.k_policy import (
    AcceptanceTracker,
    BatchAwareK,
    CostTable,
    KChoice,
    choose_k,
    expected_tokens,
)

__all__ = ["AcceptanceTracker", "BatchAwareK", "CostTable", "KChoice", "choose_k", "expected_tokens"]
