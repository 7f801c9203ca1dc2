"""Triton kernel (2): the drafter step's draft-KV plan, and the slot lookup shared with kernel (1).

How pard2 manages draft KV without copying it (the reasoning the tests check
by simulating many steps, see tests/test_kernels.py):

- The draft's attention layers share the target's KV-cache group, so a draft
  token at position p of request i writes to the slot the request's block table
  gives for p (integration map §3). No draft-only allocation exists.
- Committed history: the real tokens of a step (verified tokens and the bonus)
  at positions ``[start, committed_len)``. Every later step starts at position
  ``committed_len - 1`` (the bonus again, rewritten with identical content), so
  history is never overwritten with anything else.
- Scratch: the k-1 mask tokens at ``[committed_len, scratch_end)``. The next
  step's real tokens land on exactly these positions and overwrite the slots
  (KV is written before attention reads it in the same layer), and attention
  never reads past the sequence length, so stale mask KV is never seen.
  Rolling back the masks costs nothing: no copy, no free, no slot bookkeeping.
- Reuse of rejected slots: target-side rejected drafts occupy the positions
  the next draft pass writes its bonus and masks to; the draft pass's own
  rejected-pad rows write nowhere (``PADDING_SLOT_ID``), and so do positions
  at or past ``max_model_len``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_pard2.kernels.reference import (
    PADDING_SLOT_ID,
    SLOT_COMMITTED,
    SLOT_SCRATCH,
    SLOT_UNUSED,
    DraftKVPlan,
)

# Globals read inside @triton.jit code must be constexpr.
_COMMITTED = tl.constexpr(SLOT_COMMITTED)
_SCRATCH = tl.constexpr(SLOT_SCRATCH)
_UNUSED = tl.constexpr(SLOT_UNUSED)


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
def _plan_draft_kv_kernel(
    draft_query_start_loc_ptr,  # [B+1]
    start_positions_ptr,  # [B]
    num_real_ptr,  # [B]
    block_table_ptr,  # [B, max_blocks]
    block_table_stride,
    out_slot_mapping_ptr,  # [N] int64
    out_slot_kind_ptr,  # [N] int8
    out_committed_len_ptr,  # [B] int32
    out_scratch_end_ptr,  # [B] int32
    block_size,
    max_model_len,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    request = tl.program_id(0)
    tile = tl.program_id(1)
    row_start = tl.load(draft_query_start_loc_ptr + request).to(tl.int64)
    row_end = tl.load(draft_query_start_loc_ptr + request + 1).to(tl.int64)
    start_pos = tl.load(start_positions_ptr + request).to(tl.int64)
    num_real = tl.load(num_real_ptr + request).to(tl.int64)

    j = tile * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    in_bounds = j < row_end - row_start
    positions = start_pos + j
    is_real = j < num_real
    is_mask = (j >= num_real) & (j < num_real + K - 1)
    writes = (is_real | is_mask) & (positions < max_model_len)
    slots = slots_for_positions_device(
        block_table_ptr,
        request.to(tl.int64) * block_table_stride,
        positions,
        writes & in_bounds,
        block_size,
        max_model_len,
    )
    kind = tl.where(writes & is_real, _COMMITTED, tl.where(writes & is_mask, _SCRATCH, _UNUSED))
    tl.store(out_slot_mapping_ptr + row_start + j, slots, mask=in_bounds)
    tl.store(out_slot_kind_ptr + row_start + j, kind.to(tl.int8), mask=in_bounds)

    if tile == 0:
        committed = tl.minimum(start_pos + num_real, max_model_len)
        tl.store(out_committed_len_ptr + request, committed.to(tl.int32))
        tl.store(out_scratch_end_ptr + request, tl.minimum(committed + K - 1, max_model_len).to(tl.int32))


def plan_draft_kv_triton(
    draft_query_start_loc: torch.Tensor,
    start_positions: torch.Tensor,
    num_real: torch.Tensor,
    block_table: torch.Tensor,
    *,
    total_rows: int,
    max_rows_per_request: int,
    num_speculative_tokens: int,
    block_size: int,
    max_model_len: int,
    block: int = 128,
) -> DraftKVPlan:
    """One launch over (request, row tile); see :func:`vllm_pard2.kernels.plan_draft_kv`."""
    assert PADDING_SLOT_ID == -1
    device = draft_query_start_loc.device
    batch_size = start_positions.shape[0]
    plan = DraftKVPlan(
        slot_mapping=torch.empty(total_rows, dtype=torch.int64, device=device),
        slot_kind=torch.empty(total_rows, dtype=torch.int8, device=device),
        committed_len=torch.empty(batch_size, dtype=torch.int32, device=device),
        scratch_end=torch.empty(batch_size, dtype=torch.int32, device=device),
    )
    if batch_size == 0:
        return plan
    block = min(block, triton.next_power_of_2(max(max_rows_per_request, 1)))
    grid = (batch_size, triton.cdiv(max(max_rows_per_request, 1), block))
    _plan_draft_kv_kernel[grid](
        draft_query_start_loc,
        start_positions,
        num_real,
        block_table,
        block_table.stride(0),
        plan.slot_mapping,
        plan.slot_kind,
        plan.committed_len,
        plan.scratch_end,
        block_size,
        max_model_len,
        K=num_speculative_tokens,
        BLOCK=block,
    )
    return plan
