"""The draft model with PARD-2's fused input: ``embed(x_t) + feature_t``.

Wrapping the model (rather than changing vLLM's drafting code) keeps every
caller unchanged: the proposer's forward, ``dummy_run`` warm-up and graph
capture all pass ``input_ids`` and read the features from one persistent
buffer that the proposer fills before each step (zeros during warm-up).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FusedInputDraft(nn.Module):
    def __init__(self, draft: nn.Module, features: torch.Tensor) -> None:
        super().__init__()
        self.draft = draft
        self.features = features  # [max_num_tokens, draft hidden], filled per step

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> Any:
        if inputs_embeds is None:
            inputs_embeds = self.draft.embed_input_ids(input_ids)
        inputs_embeds = inputs_embeds + self.features[: inputs_embeds.shape[0]]
        return self.draft(input_ids=None, positions=positions, inputs_embeds=inputs_embeds, **kwargs)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.draft.compute_logits(hidden_states)

    def embed_input_ids(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.draft.embed_input_ids(input_ids, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["draft"], name)
