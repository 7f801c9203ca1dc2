"""PARD-2 proposer: target-independent and target-dependent drafting.

One draft forward per step: the request's real tokens not yet seen by the
draft (the prompt at first, then last step's accepted drafts plus the bonus
token) followed by k-1 copies of ``pard_token``; the logits at the last k
positions give the k drafts. vLLM's in-tree parallel-drafting machinery
(``SpecDecodeBaseProposer`` with ``parallel_drafting``) builds exactly that
input on CPU and GPU: positions are consecutive, the mask positions' slots are
rewritten by the next step's real tokens, and rejected tokens get no slot, so
KV written for mask positions is never read as history.

Target-dependent mode adds ``pard2_scale * target_proj(h[p-1])`` to the input
embedding of the draft row at position p, from target hidden states captured
in the target's own forward (``target_features``); the draft model is wrapped
so that every forward reads those rows (``fused_draft``).
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override
from vllm.logger import init_logger
from vllm.v1.spec_decode.draft_model import DraftModelProposer

from vllm_pard2.checkpoint import TARGET_DEPENDENT, find_projection_file, load_projection, read_pard2_spec
from vllm_pard2.proposer.fused_draft import FusedInputDraft
from vllm_pard2.proposer.target_features import FeatureCarry, fuse_features, permute_projection, plan_layers, project

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures only that logger tree


class Pard2Proposer(DraftModelProposer):
    def __init__(self, vllm_config, device, runner=None) -> None:
        super().__init__(vllm_config=vllm_config, device=device, runner=runner)
        self.target_dependent = getattr(self.speculative_config, "pard2_mode", None) == TARGET_DEPENDENT
        if not self.target_dependent:
            return
        if runner is None:
            raise RuntimeError("pard2 target-dependent drafting needs the model runner (target hidden states).")
        target_config = vllm_config.model_config
        self.pard2_spec = read_pard2_spec(self.draft_model_config.hf_config)
        self.target_hidden = target_config.get_hidden_size()
        self.layer_plan = plan_layers(self.pard2_spec.target_layers, target_config.hf_text_config.num_hidden_layers)
        # The runner then unpacks (hidden_states, aux) from the target and hands
        # the concatenated aux states to `propose` as target_hidden_states.
        runner.use_aux_hidden_state_outputs = True
        self.runner = runner
        self.fused_features = torch.zeros(self.max_num_tokens, self.hidden_size, dtype=self.dtype, device=device)
        logger.info(
            "pard2: target-dependent drafting from target layers %s (vLLM capture ids %s)",
            list(self.pard2_spec.target_layers),
            list(self.layer_plan.aux_layer_ids),
        )

    @property
    def aux_layer_ids(self) -> tuple[int, ...] | None:
        """Target layers to capture, or None in target-independent mode."""
        return self.layer_plan.aux_layer_ids if self.target_dependent else None

    @override
    def model_returns_tuple(self) -> bool:
        # The draft is a plain causal LM returning hidden states only; the base
        # class compares the method name against "draft_model".
        return False

    @override
    def propose(self, num_speculative_tokens: int, **kwargs) -> torch.Tensor:
        """One parallel pass sized to the k the scheduler asks for this step.

        With vLLM's ``num_speculative_tokens_per_batch_size`` the scheduler picks
        k <= K per step from the batch size. Drafts 1..k read only the real tokens
        and the first k-1 masks (causal attention), so a pass with k-1 masks gives
        the same k drafts as one with K-1 and costs less. At k = 0 the pass keeps
        just the new real tokens (bonus included), so every committed token still
        enters the draft KV once and, in TD mode, the carried feature moves on.
        The mask slots are scratch either way: the next step's real tokens
        start at the first mask position.
        """
        max_k = self.speculative_config.num_speculative_tokens
        k = min(num_speculative_tokens, max_k)
        # vLLM reads these two per call (input build, slot mapping, query
        # extension); a draft model gets no target hidden states, so they are equal.
        self.extra_slots_per_request = self.net_num_new_slots_per_request = max(k, 1)
        try:
            return super().propose(k, **kwargs)
        finally:
            self.extra_slots_per_request = self.net_num_new_slots_per_request = max_k
            self.num_speculative_tokens = max_k

    @override
    def _init_parallel_drafting_params(self) -> None:
        # The in-tree lookup prefers `mask_token_id` over `pard_token`; a PARD
        # draft is defined by `pard_token` (validated before the engine starts).
        super()._init_parallel_drafting_params()
        self.parallel_drafting_token_id = int(self.draft_model_config.hf_config.pard_token)

    @override
    def load_model(self, target_model: nn.Module) -> None:
        super().load_model(target_model)
        if not self.target_dependent:
            return
        path = find_projection_file(self.draft_model_config.model)
        if path is None:
            raise RuntimeError(f"pard2: target projection file not found for draft {self.draft_model_config.model}")
        state = load_projection(path, self.pard2_spec, self.hidden_size)
        weight = permute_projection(state["weight"].float(), self.layer_plan, self.target_hidden)
        self.proj_weight = weight.to(self.device, self.dtype)
        bias = state.get("bias")
        self.proj_bias = None if bias is None else bias.to(self.device, self.dtype)
        self.zero_feature = (
            torch.zeros(self.hidden_size, dtype=self.dtype, device=self.device)
            if self.proj_bias is None
            else self.pard2_spec.scale * self.proj_bias
        )
        self.final_norm = _final_norm(target_model) if self.layer_plan.normed_block is not None else None
        self.carry = FeatureCarry(self.hidden_size, self.dtype, self.device, capacity=2 * self.max_batch_size)
        self.model = FusedInputDraft(self.model, self.fused_features)

    @override
    def set_inputs_first_pass(self, target_token_ids, next_token_ids, target_positions, target_hidden_states,
                              token_indices_to_sample, cad, num_rejected_tokens_gpu):  # fmt: skip
        num_tokens, token_indices_to_sample, new_cad = super().set_inputs_first_pass(
            target_token_ids=target_token_ids,
            next_token_ids=next_token_ids,
            target_positions=target_positions,
            target_hidden_states=target_hidden_states,
            token_indices_to_sample=token_indices_to_sample,
            cad=cad,
            num_rejected_tokens_gpu=num_rejected_tokens_gpu,
        )
        if self.target_dependent:
            batch_size = cad.batch_size()
            projected = project(
                target_hidden_states,
                self.proj_weight,
                self.proj_bias,
                self.pard2_spec.scale,
                self.layer_plan,
                self.final_norm,
                self.target_hidden,
            )
            req_ids = self.runner.input_batch.req_ids[:batch_size]
            fuse_features(
                projected,
                target_positions,
                cad.query_start_loc[: batch_size + 1],
                num_rejected_tokens_gpu,
                self.extra_slots_per_request,
                num_tokens,
                self.zero_feature,
                self.carry,
                self.carry.slots(req_ids, self.runner.requests),
                self.fused_features,
            )
        return num_tokens, token_indices_to_sample, new_cad


def _final_norm(target_model: nn.Module) -> nn.Module:
    """The target's final norm (Hugging Face's hidden_states[-1] is after it)."""
    holder = target_model.get_language_model() if hasattr(target_model, "get_language_model") else target_model
    holder = getattr(holder, "model", holder)
    norm = getattr(holder, "norm", None)
    if norm is None:
        raise RuntimeError(f"pard2: cannot find the final norm of target {type(target_model).__name__}")
    return norm
