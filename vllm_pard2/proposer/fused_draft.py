"""The draft model with PARD-2's fused input: ``embed(x_t) + feature_t``.

Wrapping the model (rather than changing vLLM's drafting code) keeps every
caller unchanged: the proposer's forward, ``dummy_run`` warm-up and graph
capture all pass ``input_ids`` and read the features from one persistent
buffer that the proposer fills before each step (zeros during warm-up).

The fused embedding is written in place into a second persistent buffer, so
the compiled draft receives ``inputs_embeds`` at the same address on every
call of the same size. vLLM captures the draft's CUDA graphs with
``cudagraph_copy_inputs=False``: a freshly allocated tensor would make graph
replays read stale memory (drafts turn to garbage while outputs stay lossless).
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
        self.fused_embeds = torch.empty_like(features)  # what the compiled draft reads

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> Any:
        num_tokens = positions.shape[-1]
        fused = self.fused_embeds[:num_tokens]
        fused.copy_(self.draft.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds)
        fused.add_(self.features[:num_tokens])
        return self.draft(input_ids=None, positions=positions, inputs_embeds=fused, **kwargs)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.draft.compute_logits(hidden_states)

    def embed_input_ids(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.draft.embed_input_ids(input_ids, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["draft"], name)
