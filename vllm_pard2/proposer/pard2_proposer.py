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

import numpy as np
import torch
from torch import nn
from typing_extensions import override
from vllm.config import CUDAGraphMode
from vllm.logger import init_logger
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.spec_decode.draft_model import DraftModelProposer

from vllm_pard2.checkpoint import TARGET_DEPENDENT, find_projection_file, load_projection, read_pard2_spec
from vllm_pard2.eager_padding import padded_num_tokens, pads_eager_forwards
from vllm_pard2.proposer.catch_up import DraftLag, catch_up_slots, insert_rows, merged_slot_mapping, plan_catch_up
from vllm_pard2.proposer.draft_probs import DraftProbs
from vllm_pard2.proposer.fused_draft import FusedInputDraft
from vllm_pard2.proposer.input_contract import install_if_requested
from vllm_pard2.proposer.target_features import (
    FeatureCarry,
    TargetProjection,
    fuse_features,
    last_verified_rows,
    plan_layers,
)

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures only that logger tree


class Pard2Proposer(DraftModelProposer):
    skips_plain_steps = True  # the runner calls skip_plain_step on k = 0 steps (patches.py)

    def __init__(self, vllm_config, device, runner=None) -> None:
        super().__init__(vllm_config=vllm_config, device=device, runner=runner)
        self.runner = runner  # host copies of the batch: token ids, positions, request ids
        self.lag = DraftLag()  # requests whose draft KV k = 0 steps left behind
        self.pads_eager_forwards = pads_eager_forwards()
        self.draft_probs = _make_draft_probs(self, device)
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
        the same k drafts as one with K-1 and costs less. At k = 0 there is no
        drafter pass at all: the requests fall behind and the next drafting
        step catches their draft KV up (``catch_up``). The mask slots are
        scratch either way: the next step's real tokens start at the first
        mask position.
        """
        max_k = self.speculative_config.num_speculative_tokens
        k = min(num_speculative_tokens, max_k)
        if k == 0 and self.runner is not None:
            return self._skip_drafter(**kwargs)
        # vLLM reads these two per call (input build, slot mapping, query
        # extension); a draft model gets no target hidden states, so they are equal.
        self.extra_slots_per_request = self.net_num_new_slots_per_request = max(k, 1)
        try:
            return super().propose(k, **kwargs)
        finally:
            self.extra_slots_per_request = self.net_num_new_slots_per_request = max_k
            self.num_speculative_tokens = max_k

    @override
    def _determine_batch_execution_and_padding(self, num_tokens: int, use_cudagraphs: bool = True):
        """vLLM's choice, with eager CPU forwards padded to a few sizes (``eager_padding``)."""
        mode, num_input_tokens, across_dp = super()._determine_batch_execution_and_padding(num_tokens, use_cudagraphs)
        if self.pads_eager_forwards and mode == CUDAGraphMode.NONE and across_dp is None:
            num_input_tokens = max(num_input_tokens, padded_num_tokens(num_tokens, self.max_num_tokens))
        return mode, num_input_tokens, across_dp

    @override
    def _init_parallel_drafting_params(self) -> None:
        # The in-tree lookup prefers `mask_token_id` over `pard_token`; a PARD
        # draft is defined by `pard_token` (validated before the engine starts).
        super()._init_parallel_drafting_params()
        self.parallel_drafting_token_id = int(self.draft_model_config.hf_config.pard_token)

    @override
    def load_model(self, target_model: nn.Module) -> None:
        super().load_model(target_model)
        if self.target_dependent:
            self._load_target_projection(target_model)
        self.input_address_check = install_if_requested(self.model)

    def _load_target_projection(self, target_model: nn.Module) -> None:
        """TD mode: the projection, the carried features and the fused-input wrapper."""
        path = find_projection_file(self.draft_model_config.model)
        if path is None:
            raise RuntimeError(f"pard2: target projection file not found for draft {self.draft_model_config.model}")
        num_layers = self.vllm_config.model_config.hf_text_config.num_hidden_layers
        final_norm = _final_norm(target_model, num_layers) if self.layer_plan.normed_block is not None else None
        self.projection = TargetProjection.from_state(
            load_projection(path, self.pard2_spec, self.hidden_size),
            self.pard2_spec.scale,
            self.layer_plan,
            final_norm,
            self.target_hidden,
            self.device,
            self.dtype,
        )
        self.zero_feature = self.projection.zero_feature
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
            projected = self.projection(target_hidden_states)
            req_ids = self.runner.input_batch.req_ids[:batch_size]
            slots = self.carry.host_slots(req_ids, self.runner.requests)
            self.carry.resolve(slots, self.projection)
            fuse_features(
                projected,
                target_positions,
                cad.query_start_loc[: batch_size + 1],
                num_rejected_tokens_gpu,
                self.extra_slots_per_request,
                num_tokens,
                self.zero_feature,
                self.carry,
                self.carry.on_device(slots),
                self.fused_features,
            )
        if self.runner is not None:
            return self._catch_up(num_tokens, token_indices_to_sample, new_cad)
        return num_tokens, token_indices_to_sample, new_cad

    def _batch(self, batch_size: int) -> tuple[list[str], np.ndarray]:
        """Request ids and their step's first position (the runner's host state)."""
        self.lag.forget(self.runner.requests)
        starts = self.runner.input_batch.num_computed_tokens_cpu[:batch_size]
        return self.runner.input_batch.req_ids[:batch_size], starts

    def _skip_drafter(self, *, common_attn_metadata, target_hidden_states, target_positions,
                      num_rejected_tokens_gpu=None, **_) -> torch.Tensor:  # fmt: skip
        """k = 0: no forward. Mark the batch behind; in TD mode move each
        request's carried feature to its last verified row (a B-row projection)."""
        self._last_draft_probs = None
        batch_size = common_attn_metadata.batch_size()
        req_ids, starts = self._batch(batch_size)
        self.lag.skip(req_ids, starts)
        if self.target_dependent:
            rows = last_verified_rows(common_attn_metadata.query_start_loc[: batch_size + 1], num_rejected_tokens_gpu)
            self._carry_rows(req_ids, target_hidden_states[rows], target_positions[rows])
        return torch.empty(batch_size, 0, dtype=torch.int64, device=self.device)

    def skip_plain_step(self, aux_hidden_states: list[torch.Tensor] | None, common_attn_metadata) -> torch.Tensor:
        """k = 0 after a step that verified no drafts: ``_skip_drafter``'s bookkeeping
        straight from the runner (``patches.patch_runner_plain_step_at_k0``), without
        vLLM's draft input preparation. Every request's last row is verified, so
        TD mode concatenates and projects only those B rows."""
        self._last_draft_probs = None
        batch_size = common_attn_metadata.batch_size()
        req_ids, starts = self._batch(batch_size)
        self.lag.skip(req_ids, starts)
        if self.target_dependent:
            assert aux_hidden_states is not None
            rows = last_verified_rows(common_attn_metadata.query_start_loc[: batch_size + 1], None)
            hidden = torch.cat([h[rows] for h in aux_hidden_states], dim=-1)
            self._carry_rows(req_ids, hidden, self.runner._get_positions(rows))
        return torch.empty(batch_size, 0, dtype=torch.int64, device=self.device)

    def _carry_rows(self, req_ids: list[str], target_hidden: torch.Tensor, positions: torch.Tensor) -> None:
        """TD: each request's carried state becomes its last verified row (projected
        when the next drafting step needs it)."""
        self.carry.stash(self.carry.host_slots(req_ids, self.runner.requests), target_hidden, positions)

    def _catch_up(self, num_tokens: int, token_indices_to_sample: torch.Tensor, cad):
        """Prepend the tokens that k = 0 steps left out of the draft KV (``catch_up``)."""
        if not self.lag.num_behind:
            return num_tokens, token_indices_to_sample, cad
        batch_size = cad.batch_size()
        req_ids, starts = self._batch(batch_size)
        begins, lengths = self.lag.take(req_ids, starts, budget=self.max_num_tokens - num_tokens)
        if not lengths.any():
            return num_tokens, token_indices_to_sample, cad
        plan = plan_catch_up(
            cad.query_start_loc_cpu.numpy(),
            begins,
            lengths,
            self.runner.input_batch.token_ids_cpu,
            np.arange(batch_size),
            self.device,
        )
        insert_rows(self.input_ids, plan, plan.token_ids)
        insert_rows(self.positions, plan, plan.positions)
        if self.target_dependent:
            insert_rows(self.fused_features, plan, self.zero_feature.expand(plan.positions.shape[0], -1))
        slots = catch_up_slots(plan, cad.block_table_tensor, self.block_size, self.max_model_len)
        shift = plan.sample_shift.repeat_interleave(self.extra_slots_per_request)
        new_cad = cad.replace(
            query_start_loc=plan.query_start_loc_cpu.to(self.device, non_blocking=True),
            query_start_loc_cpu=plan.query_start_loc_cpu,
            num_actual_tokens=plan.num_rows,
            max_query_len=plan.max_query_len,
            slot_mapping=merged_slot_mapping(cad.slot_mapping, plan, slots),
            _num_computed_tokens_cache=None,
            _token_to_req_indices_cache=None,
        )
        return plan.num_rows, (token_indices_to_sample.long() + shift).to(token_indices_to_sample.dtype), new_cad

    @override
    def _sample_from_logits(
        self, logits: torch.Tensor, sampling_metadata: SamplingMetadata
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilistic drafts with q in the reserved buffer and the noise in chunks (``draft_probs``)."""
        if self.draft_probs is None or sampling_metadata.all_greedy:
            return super()._sample_from_logits(logits, sampling_metadata)
        return self.draft_probs.sample_with_metadata(logits, sampling_metadata)

    @override
    @torch.inference_mode()
    def dummy_run(self, num_tokens: int, use_cudagraphs: bool = True, is_graph_capturing: bool = False,
                  slot_mappings: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
        """The forward, then, at the largest size, one full probabilistic sampling step.

        The GPU worker sizes the KV cache in ``determine_available_memory``:
        ``memory_profiling`` resets the allocator's peak, runs
        ``GPUModelRunner.profile_run``, and charges the KV cache with the memory
        consumed since start-up plus (peak - allocated) of that run.
        ``profile_run`` calls ``_dummy_run(max_num_batched_tokens, is_profile=True)``,
        which calls this with ``num_tokens`` = ``max_num_batched_tokens``
        (= ``self.max_num_tokens``) and not capturing; so the draft logits and
        the noise chunk of ``max_num_seqs * K`` rows are in that peak, and the
        q buffer (allocated in ``__init__``) in the consumed memory. Later calls
        of that size (kernel warm-up) repeat it harmlessly; smaller ones (CUDA
        graph sizes, data-parallel idle steps) and graph captures skip it. The
        CPU worker profiles only when it sizes the KV cache from memory, through
        the same ``profile_run``.
        """
        super().dummy_run(num_tokens, use_cudagraphs, is_graph_capturing, slot_mappings)
        if self.draft_probs is not None and not is_graph_capturing and num_tokens >= self.max_num_tokens:
            self.draft_probs.reserve(self.model.compute_logits, self.hidden_size, self.dtype)


def _make_draft_probs(proposer: Pard2Proposer, device) -> DraftProbs | None:
    """The q buffer for ``max_num_seqs * K`` draft rows, when drafts are sampled from q."""
    if not proposer._enable_probabilistic_draft_probs:
        return None
    return DraftProbs(
        max_rows=proposer.max_batch_size * proposer.speculative_config.num_speculative_tokens,
        vocab_size=proposer.draft_model_config.get_vocab_size(),
        device=device,
        use_fp64_gumbel=proposer.use_fp64_gumbel,
    )


def _final_norm(target_model: nn.Module, num_layers: int) -> nn.Module:
    """The target's final norm (Hugging Face's hidden_states[-1] is after it),
    found by the same function the front end used to choose TD mode."""
    from vllm_pard2.checkpoint import find_final_norm

    norm = find_final_norm(target_model, num_layers)
    if norm is None:
        raise RuntimeError(f"pard2: cannot find the final norm of target {type(target_model).__name__}")
    return norm
