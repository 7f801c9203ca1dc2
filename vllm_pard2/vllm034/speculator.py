"""The pard2 speculator for vLLM 0.34's Model Runner V2 (TI and TD modes).

AWAITS ITS FIRST GPU RUN. vLLM 0.34 runs MRV2 only on a GPU here, and no GPU has
been lent to the project since this was written, so this module has never
executed; it is written against vLLM 0.34.0's source (``spec_decode/speculator.py``,
``dflash/``, ``standalone_ar/``). docs/vllm034.md names the check that must pass
before anyone may call it working.

One draft pass per step, as on the 0.32 path: per request, the verified target
rows, the bonus token and k-1 masks (``pard_token``), then the rejected rows as
padding (no KV write), built on device by the core's ``build_draft_inputs``
(Triton on CUDA; the torch reference is its test oracle). The draft is a plain
causal LM, so unlike DFlash it writes its own KV for the real tokens; the masks'
KV slots are overwritten by the next step's real tokens. Draft j (0-based) is
read at the bonus row + j and predicts the token one position later.

TD mode (``pard2_mode`` resolved to ``target_dependent`` by the config): the
runner captures the target's aux hidden states at ``plan_layers``' ids (set on
the draft hf_config by the config, read by vLLM's EAGLE-3 capture), and the draft
row at position p gets ``embed(x_p) + pard2_scale * target_proj(h[p-1])``, HF
index -1 normed with the target's final norm, the projection of a zero feature
at position 0, masks repeating the bonus row's feature, and the feature of a
request's last verified row carried across steps in its request-state slot.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from vllm.compilation.backends import set_model_tag
from vllm.config import VllmConfig, replace
from vllm.config.compilation import CUDAGraphMode
from vllm.forward_context import BatchDescriptor, set_forward_context
from vllm.model_executor.model_loader import get_model
from vllm.model_executor.model_loader.utils import get_draft_load_config
from vllm.v1.kv_cache_interface import KVCacheConfig
from vllm.v1.worker.gpu.attn_utils import build_slot_mappings_by_layer
from vllm.v1.worker.gpu.block_table import BlockTables
from vllm.v1.worker.gpu.cudagraph_utils import BatchExecutionDescriptor
from vllm.v1.worker.gpu.dp_utils import DPSyncState
from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers
from vllm.v1.worker.gpu.model_states.interface import ModelState
from vllm.v1.worker.gpu.spec_decode.speculator import DraftModelSpeculator
from vllm.v1.worker.gpu.spec_decode.utils import get_pp_safe_draft_load_config
from vllm.v1.worker.utils import AttentionGroup

from vllm_pard2.checkpoint import (
    TARGET_DEPENDENT,
    find_final_norm,
    find_projection_file,
    load_projection,
    read_pard2_spec,
)
from vllm_pard2.kernels import build_draft_inputs, gather_draft_features
from vllm_pard2.proposer.target_features import TargetProjection, plan_layers
from vllm_pard2.vllm034.config import resolved_mode
from vllm_pard2.vllm034.cudagraph import Pard2Buffers


class Pard2Speculator(DraftModelSpeculator):
    # The draft pass runs on its own layout, so it builds its own metadata.
    can_reuse_target_attn_metadata = False

    def __init__(self, vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(vllm_config, device)
        if self.dcp_size > 1:
            raise NotImplementedError("pard2 on vLLM 0.34 does not support decode context parallelism yet.")
        spec = self.speculative_config
        self.mask_token_id = int(self.draft_model_config.hf_config.pard_token)
        self.target_dependent = resolved_mode(spec) == TARGET_DEPENDENT
        self.pard2_spec = read_pard2_spec(self.draft_model_config.hf_config)
        target_config = vllm_config.model_config
        self.target_hidden = target_config.get_hidden_size()
        self.target_num_layers = target_config.hf_text_config.num_hidden_layers
        self.buffers: Pard2Buffers | None = None  # allocated in set_attn (needs the KV groups)
        self.draft_kv_group = -1

    # --- loading -----------------------------------------------------------

    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        """The draft checkpoint as a plain vLLM causal LM (as ``StandaloneARSpeculator``)."""
        spec = self.speculative_config
        draft_vllm_config = replace(
            spec.apply_draft_overrides(self.vllm_config),
            model_config=self.draft_model_config,
            quant_config=None,
            parallel_config=replace(spec.draft_parallel_config, rank=self.vllm_config.parallel_config.rank),
        )
        draft_vllm_config.parallel_config.data_parallel_index = self.vllm_config.parallel_config.data_parallel_index
        with set_model_tag("pard2_draft"):
            draft = get_model(
                vllm_config=draft_vllm_config,
                prefix="draft_model",
                load_config=get_pp_safe_draft_load_config(get_draft_load_config(draft_vllm_config)),
            )
        if self.target_dependent:
            self._load_target_projection(target_model)
        return draft

    def _load_target_projection(self, target_model: nn.Module) -> None:
        """``target_proj`` with its input blocks in the runner's capture order."""
        layers = self.pard2_spec.target_layers
        assert layers is not None, "the config resolved TD mode for a draft without pard2_target_layers"
        self.layer_plan = plan_layers(layers, self.target_num_layers)
        path = find_projection_file(str(self.speculative_config.model))
        assert path is not None, "the config resolved TD mode without a projection file"
        final_norm = None
        if self.layer_plan.normed_block is not None:
            final_norm = find_final_norm(target_model, self.target_num_layers)
            assert final_norm is not None, "the config checked the target's final norm"
        self.projection = TargetProjection.from_state(
            load_projection(path, self.pard2_spec, self.hidden_size),
            self.pard2_spec.scale,
            self.layer_plan,
            final_norm,
            self.target_hidden,
            self.device,
            self.dtype,
        )
        # The projection of a zero feature: position 0, and a first row whose
        # carried state is missing (prefix-cache hit, resumed preemption).
        self.zero_feature = self.projection.zero_feature

    def set_attn(
        self,
        model_state: ModelState,
        kv_cache_config: KVCacheConfig,
        block_tables: BlockTables,
        target_input_buffers: InputBuffers,
        target_attn_groups: list[list[AttentionGroup]],
    ) -> None:
        super().set_attn(model_state, kv_cache_config, block_tables, target_input_buffers, target_attn_groups)
        groups = [gid for gid, group in enumerate(self.attn_groups) if group]
        if len(groups) != 1:
            raise NotImplementedError(f"pard2 expects its draft layers in one KV cache group, found {len(groups)}.")
        self.draft_kv_group = groups[0]
        self.buffers = Pard2Buffers.allocate(
            max_num_reqs=self.max_num_reqs,
            max_num_tokens=self.max_num_tokens,
            num_speculative_tokens=self.num_speculative_steps,
            num_kv_cache_groups=len(kv_cache_config.kv_cache_groups),
            draft_hidden=self.hidden_size,
            dtype=self.dtype,
            device=self.device,
        )
        self.buffers.use_group(self.draft_kv_group)
        # `_build_attn_metadata` reads positions, query starts and sequence
        # lengths from `self.input_buffers`: point it at the draft layout's.
        self.input_buffers = self.buffers.input_buffers

    # --- CUDA graphs: not captured until the eager pass is shown lossless ---

    def init_cudagraph_manager(self, cudagraph_mode: CUDAGraphMode) -> None:
        return

    def capture(self) -> None:
        return

    def add_request(self, req_index: int) -> None:
        if self.buffers is not None:
            self.buffers.carry_position[req_index] = -2  # a new request carries no feature

    # --- one drafting step -------------------------------------------------

    @torch.inference_mode()
    def propose(
        self,
        input_batch: InputBatch,
        attn_metadata: dict[str, Any],
        slot_mappings: dict[str, torch.Tensor],
        last_hidden_states: torch.Tensor,
        aux_hidden_states: list[torch.Tensor] | None,
        num_sampled: torch.Tensor,
        num_rejected: torch.Tensor,
        last_sampled: torch.Tensor,
        next_prefill_tokens: torch.Tensor,
        temperature: torch.Tensor,
        seeds: torch.Tensor,
        dp_sync_state: DPSyncState | None = None,
        dummy_run: bool = False,
        skip_attn_for_dummy_run: bool = False,
        mm_inputs: tuple[list[torch.Tensor], torch.Tensor] | None = None,
        is_profile: bool = False,
        num_speculative_tokens: int | None = None,
    ) -> torch.Tensor:
        num_reqs = input_batch.num_reqs
        k = self.num_speculative_steps
        if self.buffers is None or (dummy_run and skip_attn_for_dummy_run):
            # Memory profiling runs before the KV cache (and so the buffers) exist.
            return self.draft_tokens[:num_reqs]
        self._copy_request_inputs(num_reqs, input_batch.idx_mapping, temperature, seeds, dummy_run)
        buffers = self.buffers
        num_target = input_batch.num_tokens
        idx = input_batch.idx_mapping[:num_reqs]
        prefill_next = next_prefill_tokens.reshape(-1, self.max_num_reqs)[0]
        bonus = torch.where(num_sampled[:num_reqs] > 0, last_sampled[idx], prefill_next[idx])
        block_table = self.block_tables.input_block_tables[self.draft_kv_group][:num_reqs]
        draft = build_draft_inputs(
            input_batch.input_ids[:num_target],
            input_batch.positions[:num_target],
            bonus,
            input_batch.query_start_loc[: num_reqs + 1],
            num_rejected[:num_reqs],
            input_batch.seq_lens[:num_reqs],
            block_table,
            num_speculative_tokens=k,
            mask_token_id=self.mask_token_id,
            block_size=self.block_tables.block_sizes[self.draft_kv_group],
            max_model_len=self.max_model_len,
            max_query_len=int(input_batch.num_scheduled_tokens[:num_reqs].max()),
            out=buffers.draft_inputs,
        )
        if dummy_run:
            draft.slot_mapping.fill_(-1)  # dummy block tables are placeholders
        # Masks past max_model_len write no KV (PAD slots) but still go through
        # the rotary embedding and attention: keep positions and sequence lengths
        # inside the limit, as DFlash does. Only a request within k tokens of
        # max_model_len drafts worse for it; verification keeps it lossless.
        draft.positions.clamp_(max=self.max_model_len - 1)
        draft.seq_lens.clamp_(max=self.max_model_len)
        num_rows = num_target + num_reqs * k
        inputs_embeds = None
        if self.target_dependent:
            assert aux_hidden_states, "TD mode needs the runner's aux hidden-state capture"
            inputs_embeds = self._fuse_target_features(draft, aux_hidden_states, input_batch, idx, num_rows)

        query_start_loc_np = input_batch.query_start_loc_np[: num_reqs + 1] + k * self.arange_np[: num_reqs + 1]
        batch_desc = BatchExecutionDescriptor(cg_mode=CUDAGraphMode.NONE, num_tokens=num_rows, num_reqs=None)
        self.draft_is_prefilling[:num_reqs] = torch.from_numpy(input_batch.is_prefilling_np[:num_reqs])
        draft_slots = buffers.slot_mappings[:, :num_rows]
        draft_attn_metadata = self._build_attn_metadata(
            num_reqs=num_reqs,
            batch_desc=batch_desc,
            query_start_loc_np=query_start_loc_np,
            seq_lens_cpu_upper_bound=input_batch.seq_lens_cpu_upper_bound,
            step=k,
            slot_mappings=draft_slots,
        )
        self._prepare_eplb_forward(num_rows)
        with set_forward_context(
            draft_attn_metadata,
            self.vllm_config,
            num_tokens=num_rows,
            cudagraph_runtime_mode=CUDAGraphMode.NONE,
            slot_mapping=build_slot_mappings_by_layer(draft_slots, self.kv_cache_config),
            batch_descriptor=BatchDescriptor(num_tokens=num_rows),
            is_padding=draft.is_rejected,
        ):
            hidden = self.model(
                input_ids=None if inputs_embeds is not None else draft.input_ids,
                positions=draft.positions,
                inputs_embeds=inputs_embeds,
            )
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        self._sample(hidden, draft.sample_indices, draft.positions, idx, num_reqs, dummy_run)
        return self.draft_tokens[:num_reqs]

    def _fuse_target_features(
        self, draft: Any, aux_hidden_states: list[torch.Tensor], input_batch: InputBatch, idx: torch.Tensor, rows: int
    ) -> torch.Tensor:
        """``embed(x) + feature`` for every draft row, in the persistent buffer."""
        buffers = self.buffers
        assert buffers is not None
        num_target = input_batch.num_tokens
        captured = torch.cat([h[:num_target] for h in aux_hidden_states], dim=-1)
        projected = self.projection(captured).to(self.dtype)
        # A request's first row pairs with the state carried from its last step,
        # valid only if it was taken at exactly the position before.
        start_pos = input_batch.positions[input_batch.query_start_loc[: idx.numel()].long()]
        carried_ok = buffers.carry_position[idx] == start_pos - 1
        carried = torch.where(carried_ok.unsqueeze(1), buffers.carry_value[idx], self.zero_feature)
        features = gather_draft_features(draft, projected, carried)
        features = torch.where((draft.positions == 0).unsqueeze(1), self.zero_feature, features)
        carry_rows = draft.carry_rows.long()
        buffers.carry_value[idx] = projected[carry_rows]
        buffers.carry_position[idx] = input_batch.positions[carry_rows].long()
        fused = buffers.fused_embeds[:rows]
        fused.copy_(self.model.embed_input_ids(draft.input_ids))
        fused.add_(features)
        return fused

    def _sample(
        self,
        hidden: torch.Tensor,
        sample_indices: torch.Tensor,
        positions: torch.Tensor,
        idx: torch.Tensor,
        num_reqs: int,
        dummy_run: bool,
    ) -> None:
        """Draft j of each request from its bonus row + j (predicting one
        position later), through vLLM's draft sampling and logits cache."""
        buffers = self.buffers
        assert buffers is not None
        k = self.num_speculative_steps
        num_samples = num_reqs * k
        rows = sample_indices.long()
        buffers.sample_positions[:num_samples] = positions[rows]
        buffers.sample_idx_mapping[:num_samples] = idx.repeat_interleave(k)
        if dummy_run:
            buffers.sample_idx_mapping[:num_samples] = -1  # inert: no draft-logits writes
        tokens = self.sample_draft(
            hidden[rows],
            buffers.sample_positions[:num_samples],
            buffers.sample_idx_mapping[:num_samples],
            self.temperature,
            self.seeds,
            buffers.sample_columns[:num_samples],
            self.draft_logits,
            num_steps=k,
        )
        self.draft_tokens[:num_reqs] = tokens.view(num_reqs, k)
