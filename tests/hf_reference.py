"""One PARD-2 draft step in plain PyTorch on Hugging Face models: the oracle.

Straight from the method statement, with no vLLM involved: the target's
``output_hidden_states`` entries listed in ``pard2_target_layers`` are
concatenated per position; the draft input at position t is
``embed(x_t) + scale * target_proj(feat[t-1])`` with a zero feature at
position 0; the k-1 masks after the last real token repeat that token's
feature; the drafts are the argmax of the last k positions' logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vllm_pard2.checkpoint import Pard2Spec, find_projection_file, load_projection, read_pard2_spec


class ReferenceDrafter:
    """A HF target + PARD-2 draft pair loaded from disk (float32, CPU)."""

    def __init__(self, target_dir: str | Path, draft_dir: str | Path) -> None:
        from transformers import AutoModelForCausalLM

        self.target = AutoModelForCausalLM.from_pretrained(target_dir, torch_dtype=torch.float32).eval()
        self.draft = AutoModelForCausalLM.from_pretrained(draft_dir, torch_dtype=torch.float32).eval()
        self.spec: Pard2Spec = read_pard2_spec(self.draft.config)
        self.pard_token = int(self.draft.config.pard_token)
        path = find_projection_file(str(draft_dir))
        self.projection = None
        if path is not None:
            self.projection = load_projection(path, self.spec, self.draft.config.hidden_size)

    @torch.no_grad()
    def target_features(self, token_ids: Sequence[int]) -> torch.Tensor:
        """[len(token_ids), pard2_target_dim]: feature of every position."""
        out = self.target(torch.tensor([list(token_ids)]), output_hidden_states=True)
        return torch.cat([out.hidden_states[i][0] for i in self.spec.target_layers], dim=-1)

    def draft_step(
        self, context: Sequence[int], k: int, target_dependent: bool = True, zero_feature_rows: Sequence[int] = ()
    ) -> list[int]:
        """Drafts for the k positions after ``context`` (prompt + generated
        tokens, the last one being the bonus token). ``zero_feature_rows``
        lists positions whose feature is zero although p > 0 (vLLM's rule for
        the first row after a prefix-cache hit)."""
        return self.draft_logits(context, k, target_dependent, zero_feature_rows).argmax(dim=-1).tolist()

    @torch.no_grad()
    def draft_logits(
        self, context: Sequence[int], k: int, target_dependent: bool = True, zero_feature_rows: Sequence[int] = ()
    ) -> torch.Tensor:
        """[k, vocab] draft logits behind ``draft_step``."""
        ids = torch.tensor(list(context) + [self.pard_token] * (k - 1))
        embeds = self.draft.get_input_embeddings()(ids)
        if target_dependent:
            assert self.projection is not None, "the draft has no target projection"
            last = len(context) - 1
            feats = self.target_features(context[:last])  # h_0 .. h_{last-1}
            feature_in = torch.zeros(len(ids), feats.shape[1])
            feature_in[1 : last + 1] = feats
            feature_in[last + 1 :] = feats[last - 1] if last > 0 else 0.0
            feature_in[list(zero_feature_rows)] = 0.0
            projected = F.linear(feature_in, self.projection["weight"].float(), self.projection.get("bias"))
            embeds = embeds + self.spec.scale * projected
        return self.draft(inputs_embeds=embeds[None]).logits[0][-k:]
