"""Torch versions of the pard2 drafter-step kernels: the CPU path and the test oracle.

Every function here is vectorised and free of host synchronisation (no
``.item()``, no boolean indexing, ``repeat_interleave`` with ``output_size``),
so it is also a correct (slower) GPU fallback when Triton is missing. The
Triton kernels in this package compute exactly the same tensors.

Layout (same as vLLM's in-tree parallel drafting, ``set_inputs_first_pass``
with ``pass_hidden_states_to_model=False``): request ``i`` had ``n_i`` rows in
the target step, the last ``r_i`` of them rejected drafts. Its draft rows are
``n_i + k``, starting at ``query_start_loc[i] + i * k``::

    [ v_i verified tokens | bonus | k-1 x mask | r_i rejected pads ]     v_i = n_i - r_i

Positions are ``start_pos_i + j`` (rejected pads: 0); slots come from the
request's block table; rejected pads and positions >= ``max_model_len`` get
``PADDING_SLOT_ID`` (no KV write).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PADDING_SLOT_ID = -1
NO_FEATURE_ROW = -1


@dataclass
class DraftInputs:
    """Drafter inputs for one step, all on the device of the target tensors.

    ``feature_rows`` (target-dependent mode): for draft row r holding the token
    at position p of request i, the index (into this step's target rows) of the
    target hidden state at position p-1, or ``NO_FEATURE_ROW`` (-1) for the
    request's first row, whose feature is the one carried from the previous
    step (zero at position 0). Mask rows get the bonus token's feature (the
    last real token's, per the PARD-2 recipe); rejected pads get -1 (don't care:
    no KV write, never sampled). ``carry_rows[i]`` is the target row whose
    hidden state the request must carry into the next step: the bonus token's
    feature, i.e. the feature of next step's first draft row.
    """

    input_ids: torch.Tensor  # [T + B*k] int32
    positions: torch.Tensor  # [T + B*k] int64
    slot_mapping: torch.Tensor  # [T + B*k] int64
    is_rejected: torch.Tensor  # [T + B*k] bool
    is_masked: torch.Tensor  # [T + B*k] bool
    sample_indices: torch.Tensor  # [B*k] int32: rows of bonus, mask 1..k-1 per request
    feature_rows: torch.Tensor  # [T + B*k] int32
    carry_rows: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B+1] int32, every query extended by k
    seq_lens: torch.Tensor  # [B] int32, every sequence extended by k
    request_of_row: torch.Tensor  # [T + B*k] int32


def draft_input_sizes(total_in: int, batch_size: int, k: int) -> dict[str, int]:
    """Length of every :class:`DraftInputs` field for a batch (host ints)."""
    rows = total_in + batch_size * k
    per_row = ("input_ids", "positions", "slot_mapping", "is_rejected", "is_masked", "feature_rows", "request_of_row")
    sizes = dict.fromkeys(per_row, rows)
    sizes.update(sample_indices=batch_size * k, carry_rows=batch_size, query_start_loc=batch_size + 1)
    sizes["seq_lens"] = batch_size
    return sizes


def draft_input_views(out: DraftInputs, total_in: int, batch_size: int, k: int) -> DraftInputs:
    """Prefix views of persistent buffers (e.g. for CUDA-graph capture) sized for this batch."""
    views = {}
    for name, size in draft_input_sizes(total_in, batch_size, k).items():
        buffer = getattr(out, name)
        if buffer.shape[0] < size:
            raise ValueError(f"out.{name} holds {buffer.shape[0]} entries, this batch needs {size}")
        views[name] = buffer[:size]
    return DraftInputs(**views)


def slots_for_positions(
    positions: torch.Tensor,
    request_of_row: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    max_model_len: int,
    write: torch.Tensor,
) -> torch.Tensor:
    """KV slot of each row from its request's block table; PADDING where ``write`` is false
    or the position is past ``max_model_len`` (the lookup itself is clamped)."""
    clamped = positions.clamp(max=max_model_len - 1)
    block_numbers = block_table[request_of_row, clamped // block_size].to(torch.int64)
    slots = block_numbers * block_size + clamped % block_size
    keep = write & (positions < max_model_len)
    return torch.where(keep, slots, torch.full_like(slots, PADDING_SLOT_ID))


def _row_layout(query_start_loc: torch.Tensor, extra_rows: int, total_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(request index, index within the request) of every output row, without a host sync."""
    batch_size = query_start_loc.shape[0] - 1
    device = query_start_loc.device
    qsl = query_start_loc.to(torch.int64)
    rows_per_request = qsl[1:] - qsl[:-1] + extra_rows
    requests = torch.arange(batch_size, device=device)
    request_of_row = torch.repeat_interleave(requests, rows_per_request, output_size=total_rows)
    out_start = qsl[:-1] + requests * extra_rows
    local = torch.arange(total_rows, device=device) - out_start[request_of_row]
    return request_of_row, local


def build_draft_inputs_reference(
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
) -> DraftInputs:
    """Torch implementation of :func:`vllm_pard2.kernels.build_draft_inputs`."""
    k = num_speculative_tokens
    device = target_token_ids.device
    batch_size = next_token_ids.shape[0]
    total_in = target_token_ids.shape[0]
    total_out = total_in + batch_size * k
    qsl = query_start_loc.to(torch.int64)
    if num_rejected is None:
        num_rejected = torch.zeros(batch_size, dtype=torch.int64, device=device)
    num_valid = (qsl[1:] - qsl[:-1]) - num_rejected.to(torch.int64)  # [B], >= 1

    request_of_row, j = _row_layout(query_start_loc, k, total_out)
    row_start = qsl[:-1][request_of_row]
    valid = num_valid[request_of_row]
    is_verified = j < valid
    is_bonus = j == valid
    is_masked = (j > valid) & (j < valid + k)
    is_rejected = j >= valid + k

    source = (row_start + j).clamp(max=max(total_in - 1, 0))
    ids = target_token_ids.to(torch.int64)[source]
    ids = torch.where(is_bonus, next_token_ids.to(torch.int64)[request_of_row], ids)
    ids = torch.where(is_masked, torch.full_like(ids, mask_token_id), ids)
    ids = torch.where(is_rejected, torch.full_like(ids, padding_token_id), ids)

    start_pos = target_positions.to(torch.int64)[qsl[:-1].clamp(max=max(total_in - 1, 0))]
    positions = torch.where(is_rejected, torch.zeros_like(j), start_pos[request_of_row] + j)
    slot_mapping = slots_for_positions(positions, request_of_row, block_table, block_size, max_model_len, ~is_rejected)

    requests = torch.arange(batch_size, device=device)
    out_start = qsl[:-1] + requests * k
    sample_indices = (out_start + num_valid).unsqueeze(1) + torch.arange(k, device=device)

    bonus_feature = row_start + valid - 1
    feature_rows = torch.where(is_verified | is_bonus, row_start + j - 1, bonus_feature)
    feature_rows = torch.where((j == 0) | is_rejected, torch.full_like(j, NO_FEATURE_ROW), feature_rows)

    new_qsl = qsl + k * torch.arange(batch_size + 1, device=device)
    return DraftInputs(
        input_ids=ids.to(torch.int32),
        positions=positions,
        slot_mapping=slot_mapping,
        is_rejected=is_rejected,
        is_masked=is_masked,
        sample_indices=sample_indices.reshape(-1).to(torch.int32),
        feature_rows=feature_rows.to(torch.int32),
        carry_rows=(qsl[:-1] + num_valid - 1).to(torch.int32),
        query_start_loc=new_qsl.to(torch.int32),
        seq_lens=(seq_lens.to(torch.int64) + k).to(torch.int32),
        request_of_row=request_of_row.to(torch.int32),
    )


def gather_draft_features(
    draft: DraftInputs, target_features: torch.Tensor, carried_features: torch.Tensor
) -> torch.Tensor:
    """TD mode: the target feature each draft row is fused with, ``[T + B*k, D]``.

    ``target_features``: this step's target rows ``[T, D]``; ``carried_features``:
    each request's feature carried from the previous step ``[B, D]`` (update it
    afterwards with ``target_features[draft.carry_rows]``). Rows at position 0
    get zeros (PARD-2: feat[-1] = 0). No host sync.
    """
    rows = draft.feature_rows.to(torch.int64)
    own = target_features.index_select(0, rows.clamp(min=0))
    carried = carried_features.index_select(0, draft.request_of_row.to(torch.int64))
    features = torch.where((rows >= 0).unsqueeze(1), own, carried)
    return features.masked_fill((draft.positions == 0).unsqueeze(1), 0)
