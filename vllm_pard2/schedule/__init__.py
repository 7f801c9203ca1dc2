"""Step-level scheduling for pard2: the per-step k (adaptive, measured) and its cost model."""

from vllm_pard2.schedule.adaptive import AdaptiveK, AdaptiveKSettings, batch_bucket
from vllm_pard2.schedule.k_policy import AcceptanceTracker, CostTable, KChoice, choose_k, expected_tokens

__all__ = [
    "AcceptanceTracker",
    "AdaptiveK",
    "AdaptiveKSettings",
    "CostTable",
    "KChoice",
    "batch_bucket",
    "choose_k",
    "expected_tokens",
]
