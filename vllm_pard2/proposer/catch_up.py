"""Lazy draft catch-up: a k = 0 step runs no drafter forward.

When the engine picks k = 0 for a step, the drafter does nothing at all: no
forward, no KV write. The draft KV of each request in that step then stops
short of the committed tokens. The next step that drafts prepends, per
request, every committed token the drafter has not seen (positions
``[draft_end, start)``, token ids from the runner's host copy of the sequence)
to the usual parallel-draft rows::

    [ catch-up c_i | verified | bonus | k-1 masks | rejected pads ]

Attention needs no new rule: each request's query just starts ``c_i``
positions earlier (``seq_lens`` unchanged, ``query_start_loc`` shifted), so
the catch-up rows read the older draft KV and write their own, and the rows
after them see a complete history. In target-dependent mode the catch-up
rows get the zero feature (their target states are gone); the first regular
row keeps its carried feature because the proposer still moves the carry on
at k = 0 steps (one B-row projection). The host does all index arithmetic
from data it already has (positions, token ids), so nothing waits on the
device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm_pard2.kernels.reference import PADDING_SLOT_ID, slots_for_positions


class DraftLag:
    """Per request: the first position the draft KV lacks, for requests behind.

    A request absent from the map is in step (its draft KV covers every
    position before the start of its current step's input)."""

    def __init__(self) -> None:
        self.draft_end: dict[str, int] = {}

    def skip(self, req_ids: list[str], starts: np.ndarray) -> None:
        """A step without drafter pass: requests in step fall behind at ``start``."""
        for req_id, start in zip(req_ids, starts.tolist(), strict=True):
            self.draft_end.setdefault(req_id, start)

    def take(self, req_ids: list[str], starts: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Catch-up ``(begin, length)`` per request for a drafting step, in batch
        order, at most ``budget`` rows in all. A request cut short
        stays behind from where this step's catch-up stops."""
        begins = starts.astype(np.int64, copy=True)
        lengths = np.zeros(len(req_ids), dtype=np.int64)
        for i, (req_id, start) in enumerate(zip(req_ids, starts.tolist(), strict=True)):
            end = self.draft_end.pop(req_id, None)
            if end is None or end >= start:
                continue
            take = min(start - end, budget)
            begins[i], lengths[i] = end, take
            budget -= take
            if end + take < start:
                self.draft_end[req_id] = end + take
        return begins, lengths

    def forget(self, live: object) -> None:
        """Drop requests that are no longer in ``live`` (finished or preempted)."""
        for req_id in [r for r in self.draft_end if r not in live]:
            del self.draft_end[req_id]

    @property
    def num_behind(self) -> int:
        return len(self.draft_end)


@dataclass
class CatchUpPlan:
    """Where the rows go once catch-up rows are inserted (device tensors), and
    the new per-request row starts (host)."""

    dest_of_regular: torch.Tensor  # [N] new row of each regular draft row
    dest_of_catch_up: torch.Tensor  # [C] new row of each catch-up row
    positions: torch.Tensor  # [C] int64
    requests: torch.Tensor  # [C] int64 batch index
    token_ids: torch.Tensor  # [C] int32
    sample_shift: torch.Tensor  # [B] rows each request's regular rows moved by
    query_start_loc_cpu: torch.Tensor  # [B+1] int32
    max_query_len: int
    num_rows: int  # N + C


def plan_catch_up(
    query_start_loc_cpu: np.ndarray,
    begins: np.ndarray,
    lengths: np.ndarray,
    token_ids_cpu: np.ndarray,
    batch_rows: np.ndarray,
    device: torch.device,
) -> CatchUpPlan:
    """Index arithmetic on the host: ``query_start_loc_cpu`` is the regular
    layout's [B+1] row starts, ``token_ids_cpu[batch_rows[i], begin:begin+len]``
    the catch-up tokens of request i."""
    qsl = query_start_loc_cpu.astype(np.int64)
    batch_size = len(lengths)
    num_regular = int(qsl[-1])
    shift_after = np.cumsum(lengths)  # rows inserted up to and including request i
    shift_before = shift_after - lengths
    new_qsl = qsl + np.concatenate([[0], shift_after])
    total = int(lengths.sum())
    request_of_catch_up = np.repeat(np.arange(batch_size), lengths)
    local = np.arange(total) - np.repeat(shift_before, lengths)
    positions = np.repeat(begins, lengths) + local
    tokens = token_ids_cpu[np.repeat(batch_rows, lengths), positions].astype(np.int32)
    dest_regular = np.arange(num_regular) + np.repeat(shift_after, np.diff(qsl))
    dest_catch_up = np.repeat(new_qsl[:-1], lengths) + local

    def to_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype, non_blocking=True)

    return CatchUpPlan(
        dest_of_regular=to_device(dest_regular, torch.int64),
        dest_of_catch_up=to_device(dest_catch_up, torch.int64),
        positions=to_device(positions, torch.int64),
        requests=to_device(request_of_catch_up, torch.int64),
        token_ids=to_device(tokens, torch.int32),
        sample_shift=to_device(shift_after, torch.int64),
        query_start_loc_cpu=torch.from_numpy(new_qsl.astype(np.int32)),
        max_query_len=int(np.diff(new_qsl).max()) if batch_size else 0,
        num_rows=num_regular + total,
    )


def catch_up_slots(plan: CatchUpPlan, block_table: torch.Tensor, block_size: int, max_model_len: int) -> torch.Tensor:
    """KV slot of each catch-up row from its request's block table (every
    catch-up position precedes the step's input, so all of them are written)."""
    writes = torch.ones_like(plan.positions, dtype=torch.bool)
    return slots_for_positions(plan.positions, plan.requests, block_table, block_size, max_model_len, writes)


def insert_rows(buffer: torch.Tensor, plan: CatchUpPlan, catch_up_values: torch.Tensor) -> None:
    """Rewrite ``buffer[:N+C]`` in place: regular rows ``buffer[:N]`` moved to
    their new rows, catch-up values written into theirs (the buffer's address
    stays: it may be a CUDA-graph input)."""
    num_regular = plan.dest_of_regular.shape[0]
    merged = buffer.new_empty((plan.num_rows, *buffer.shape[1:]))
    merged[plan.dest_of_regular] = buffer[:num_regular]
    merged[plan.dest_of_catch_up] = catch_up_values.to(buffer.dtype)
    buffer[: plan.num_rows].copy_(merged)


def merged_slot_mapping(regular: torch.Tensor, plan: CatchUpPlan, catch_up: torch.Tensor) -> torch.Tensor:
    """The slot mapping of the merged rows (a new tensor; vLLM copies it into
    its own persistent slot-mapping buffer)."""
    merged = regular.new_full((plan.num_rows,), PADDING_SLOT_ID)
    merged[plan.dest_of_regular] = regular[: plan.dest_of_regular.shape[0]]
    merged[plan.dest_of_catch_up] = catch_up.to(regular.dtype)
    return merged
