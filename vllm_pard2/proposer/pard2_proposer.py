"""PARD-2 proposer, target-independent mode.

One draft forward per step: the request's real tokens not yet seen by the
draft (the prompt at first, then last step's accepted drafts plus the bonus
token) followed by k-1 copies of ``pard_token``; the logits at the last k
positions give the k drafts. vLLM's in-tree parallel-drafting machinery
(``SpecDecodeBaseProposer`` with ``parallel_drafting``) builds exactly that
input on CPU and GPU: positions are consecutive, the mask positions' slots are
rewritten by the next step's real tokens, and rejected tokens get no slot, so
KV written for mask positions is never read as history.
"""

from __future__ import annotations

from typing_extensions import override
from vllm.v1.spec_decode.draft_model import DraftModelProposer


class Pard2Proposer(DraftModelProposer):
    @override
    def model_returns_tuple(self) -> bool:
        # The draft is a plain causal LM returning hidden states only; the base
        # class compares the method name against "draft_model".
        return False

    @override
    def _init_parallel_drafting_params(self) -> None:
        # The in-tree lookup prefers `mask_token_id` over `pard_token`; a PARD
        # draft is defined by `pard_token` (validated before the engine starts).
        super()._init_parallel_drafting_params()
        self.parallel_drafting_token_id = int(self.draft_model_config.hf_config.pard_token)
