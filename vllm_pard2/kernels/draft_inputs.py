"""Triton kernel (1): the whole batch's drafter inputs for one pard2 step, in one launch.

Computes what vLLM's in-tree parallel drafting needs three steps for
(``copy_and_expand_eagle_inputs_kernel``, ``compute_new_slot_mapping``,
``extend_all_queries_by_N``), plus the target-dependent mode's feature rows,
from device tensors only (no host sync). Semantics and layout:
:mod:`vllm_pard2.kernels.reference`, which is also the CPU path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_pard2.kernels.reference import DraftInputs, draft_input_sizes, draft_input_views


@triton.jit
def slots_for_positions_device(
    block_table_ptr,
    block_table_row,  # int64 offset of the request's block-table row
    positions,  # int64 block
    write,  # bool block: rows that write KV
    block_size,
    max_model_len,
):
    """Per-row KV slot; -1 where nothing must be written (mirrors ``compute_new_slot_mapping``)."""
    clamped = tl.minimum(positions, max_model_len - 1)
    block_number = tl.load(block_table_ptr + block_table_row + clamped // block_size, mask=write, other=0)
    slots = block_number.to(tl.int64) * block_size + clamped % block_size
    keep = write & (positions < max_model_len)
    return tl.where(keep, slots, -1)


@triton.jit
def _build_draft_inputs_kernel(
    target_token_ids_ptr,  # [T]
    target_positions_ptr,  # [T]
    next_token_ids_ptr,  # [B]
    query_start_loc_ptr,  # [B+1] target rows
    num_rejected_ptr,  # [B] (unused when not HAS_REJECTED)
    seq_lens_ptr,  # [B]
    block_table_ptr,  # [B, max_blocks]
    block_table_stride,
    out_input_ids_ptr,  # [T + B*K] int32
    out_positions_ptr,  # [T + B*K] int64
    out_slot_mapping_ptr,  # [T + B*K] int64
    out_is_rejected_ptr,  # [T + B*K] bool
    out_is_masked_ptr,  # [T + B*K] bool
    out_sample_indices_ptr,  # [B*K] int32
    out_feature_rows_ptr,  # [T + B*K] int32
    out_carry_rows_ptr,  # [B] int32
    out_query_start_loc_ptr,  # [B+1] int32
    out_seq_lens_ptr,  # [B] int32
    out_request_of_row_ptr,  # [T + B*K] int32
    total_input_tokens,
    mask_token_id,
    padding_token_id,
    block_size,
    max_model_len,
    K: tl.constexpr,
    HAS_REJECTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    request = tl.program_id(0)
    tile = tl.program_id(1)
    q_start = tl.load(query_start_loc_ptr + request).to(tl.int64)
    q_end = tl.load(query_start_loc_ptr + request + 1).to(tl.int64)
    num_rejected = 0
    if HAS_REJECTED:
        num_rejected = tl.load(num_rejected_ptr + request).to(tl.int64)
    num_valid = q_end - q_start - num_rejected
    num_rows = q_end - q_start + K
    out_start = q_start + request.to(tl.int64) * K

    j = tile * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    in_bounds = j < num_rows
    is_verified = j < num_valid
    is_bonus = j == num_valid
    is_masked = (j > num_valid) & (j < num_valid + K)
    is_rejected = j >= num_valid + K

    source = tl.minimum(q_start + j, total_input_tokens - 1)
    ids = tl.load(target_token_ids_ptr + source, mask=is_verified & in_bounds, other=0).to(tl.int64)
    bonus = tl.load(next_token_ids_ptr + request).to(tl.int64)
    ids = tl.where(is_bonus, bonus, ids)
    ids = tl.where(is_masked, mask_token_id, ids)
    ids = tl.where(is_rejected, padding_token_id, ids)

    start_pos = tl.load(target_positions_ptr + tl.minimum(q_start, total_input_tokens - 1)).to(tl.int64)
    positions = tl.where(is_rejected, 0, start_pos + j)
    slots = slots_for_positions_device(
        block_table_ptr,
        request.to(tl.int64) * block_table_stride,
        positions,
        (~is_rejected) & in_bounds,
        block_size,
        max_model_len,
    )

    feature = tl.where(is_verified | is_bonus, q_start + j - 1, q_start + num_valid - 1)
    feature = tl.where((j == 0) | is_rejected, -1, feature)

    out = out_start + j
    tl.store(out_input_ids_ptr + out, ids.to(tl.int32), mask=in_bounds)
    tl.store(out_positions_ptr + out, positions, mask=in_bounds)
    tl.store(out_slot_mapping_ptr + out, slots, mask=in_bounds)
    tl.store(out_is_rejected_ptr + out, is_rejected, mask=in_bounds)
    tl.store(out_is_masked_ptr + out, is_masked, mask=in_bounds)
    tl.store(out_feature_rows_ptr + out, feature.to(tl.int32), mask=in_bounds)
    tl.store(out_request_of_row_ptr + out, request.to(tl.int32) + tl.zeros_like(j).to(tl.int32), mask=in_bounds)
    is_sampled = (j >= num_valid) & (j < num_valid + K)
    tl.store(
        out_sample_indices_ptr + request.to(tl.int64) * K + (j - num_valid),
        out.to(tl.int32),
        mask=is_sampled & in_bounds,
    )

    if tile == 0:
        tl.store(out_carry_rows_ptr + request, (q_start + num_valid - 1).to(tl.int32))
        tl.store(out_query_start_loc_ptr + request + 1, (q_end + (request.to(tl.int64) + 1) * K).to(tl.int32))
        seq_len = tl.load(seq_lens_ptr + request)
        tl.store(out_seq_lens_ptr + request, (seq_len + K).to(tl.int32))
        if request == 0:
            tl.store(out_query_start_loc_ptr, q_start.to(tl.int32))


def build_draft_inputs_triton(
    target_token_ids: torch.Tensor,
    target_positions: torch.Tensor,
    next_token_ids: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_rejected: torch.Tensor | None,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    num_speculative_tokens: int,
    mask_token_id: int,
    block_size: int,
    max_model_len: int,
    padding_token_id: int = 0,
    max_query_len: int | None = None,
    out: DraftInputs | None = None,
    block: int = 256,
) -> DraftInputs:
    """One launch over (request, row tile). ``max_query_len`` (host int, e.g.
    ``CommonAttentionMetadata.max_query_len``) sizes the grid; without it the
    total token count is a safe, sync-free upper bound. ``out``: persistent
    buffers to write into (prefix views are returned)."""
    k = num_speculative_tokens
    device = target_token_ids.device
    batch_size = next_token_ids.shape[0]
    total_in = target_token_ids.shape[0]
    if out is not None:
        result = draft_input_views(out, total_in, batch_size, k)
    else:
        dtypes = dict(positions=torch.int64, slot_mapping=torch.int64, is_rejected=torch.bool, is_masked=torch.bool)
        result = DraftInputs(
            **{
                name: torch.empty(size, dtype=dtypes.get(name, torch.int32), device=device)
                for name, size in draft_input_sizes(total_in, batch_size, k).items()
            }
        )
    if batch_size == 0 or total_in == 0:  # nothing to launch; an empty batch's layout is its input
        result.query_start_loc.copy_(query_start_loc[: batch_size + 1])
        return result
    rows_per_request = (total_in if max_query_len is None else max_query_len) + k
    block = min(block, triton.next_power_of_2(rows_per_request))
    grid = (batch_size, triton.cdiv(rows_per_request, block))
    _build_draft_inputs_kernel[grid](
        target_token_ids,
        target_positions,
        next_token_ids,
        query_start_loc,
        num_rejected if num_rejected is not None else query_start_loc,
        seq_lens,
        block_table,
        block_table.stride(0),
        result.input_ids,
        result.positions,
        result.slot_mapping,
        result.is_rejected,
        result.is_masked,
        result.sample_indices,
        result.feature_rows,
        result.carry_rows,
        result.query_start_loc,
        result.seq_lens,
        result.request_of_row,
        total_in,
        mask_token_id,
        padding_token_id,
        block_size,
        max_model_len,
        K=k,
        HAS_REJECTED=num_rejected is not None,
        BLOCK=block,
    )
    return result
