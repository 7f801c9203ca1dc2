"""Target hidden states for target-dependent (TD) drafting.

The drafter was trained on Hugging Face ``output_hidden_states`` entries of the
target, concatenated in the order of ``pard2_target_layers``. vLLM captures
auxiliary states as pre-norm residual streams ("after L decoder layers", L = 0
the embeddings) and returns them in ascending layer order. HF index i < N is
exactly vLLM layer id i; HF index N (= -1) is the state after the final norm,
which vLLM does not capture, so we capture layer id N and apply the target's
final norm ourselves. The projection's input blocks are permuted once at load
time to the capture order (blocks that name the same state are summed), so the
per-step work is one norm on one block and one GEMM.

Feature rows follow the draft input layout that vLLM's parallel-drafting input
build produces (``copy_and_expand_eagle_inputs_kernel``): per request, the valid
target rows, the bonus token, k-1 masks, then rejected padding. The draft row
at position p gets ``scale * target_proj(h[p-1])``; the masks repeat the bonus
row's feature; position 0 gets the projection of a zero feature. The feature
of the row before a request's first row in this step comes from the request's
carried state, valid only when it was taken at exactly that position; after a
prefix-cache hit or a resumed preemption there is none and the row gets the
zero feature (lossless either way: features only change the drafts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LayerPlan:
    """How ``pard2_target_layers`` map onto vLLM's auxiliary capture."""

    aux_layer_ids: tuple[int, ...]  # ascending, as vLLM returns them
    hf_to_aux_block: tuple[int, ...]  # for each listed HF index, its block in the capture
    normed_block: int | None  # capture block that needs the final norm (HF -1), if any


def plan_layers(hf_layers: tuple[int, ...], num_layers: int) -> LayerPlan:
    resolved = [i + num_layers + 1 if i < 0 else i for i in hf_layers]
    aux_ids = tuple(sorted(set(resolved)))
    return LayerPlan(
        aux_layer_ids=aux_ids,
        hf_to_aux_block=tuple(aux_ids.index(i) for i in resolved),
        normed_block=aux_ids.index(num_layers) if num_layers in aux_ids else None,
    )


def permute_projection(weight: torch.Tensor, plan: LayerPlan, hidden: int) -> torch.Tensor:
    """Reorder ``target_proj.weight``'s input blocks from the HF listing order
    to the capture order, summing blocks that read the same captured state."""
    out = weight.new_zeros(weight.shape[0], len(plan.aux_layer_ids) * hidden)
    for hf_block, aux_block in enumerate(plan.hf_to_aux_block):
        out[:, aux_block * hidden : (aux_block + 1) * hidden] += weight[:, hf_block * hidden : (hf_block + 1) * hidden]
    return out


def draft_row_sources(
    query_start_loc: torch.Tensor,
    num_rejected: torch.Tensor | None,
    extra_slots: int,
    num_draft_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every draft input row, the target row whose state is its feature.

    Returns ``(source_row, first_row, last_valid_row)``: ``source_row[r]`` is
    the target row at position p-1 for the draft row at position p (clamped to
    the last valid row for the bonus, mask and padding rows); ``first_row[i]``
    is request i's first draft row, whose source lies before this step;
    ``last_valid_row[i]`` is request i's last verified target row (carried).
    All on device, no host synchronisation.
    """
    qsl = query_start_loc.long()
    batch_size = qsl.numel() - 1
    query_lens = qsl[1:] - qsl[:-1]
    rejected = num_rejected.long() if num_rejected is not None else torch.zeros_like(query_lens)
    num_valid = query_lens - rejected
    request = torch.repeat_interleave(
        torch.arange(batch_size, device=qsl.device), query_lens + extra_slots, output_size=num_draft_rows
    )
    draft_start = qsl[:-1] + extra_slots * torch.arange(batch_size, device=qsl.device)
    local = torch.arange(num_draft_rows, device=qsl.device) - draft_start[request]
    source_row = qsl[request] + torch.minimum(local, num_valid[request]) - 1
    return source_row.clamp_(min=0), draft_start, last_verified_rows(qsl, num_rejected)


def last_verified_rows(query_start_loc: torch.Tensor, num_rejected: torch.Tensor | None) -> torch.Tensor:
    """Each request's last verified target row (the state its next row pairs with)."""
    last = query_start_loc[1:].long() - 1
    return last if num_rejected is None else last - num_rejected.long()


def project(
    target_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    plan: LayerPlan,
    final_norm: torch.nn.Module | None,
    hidden: int,
) -> torch.Tensor:
    """``scale * target_proj(features)`` for every target row, from the
    runner's concatenated capture (modified in place for the normed block)."""
    if plan.normed_block is not None:
        assert final_norm is not None
        block = target_hidden[:, plan.normed_block * hidden : (plan.normed_block + 1) * hidden]
        block.copy_(final_norm(block.contiguous()))
    return scale * F.linear(target_hidden.to(weight.dtype), weight, bias)


@dataclass
class TargetProjection:
    """``scale * target_proj`` ready for the runner's capture: input blocks in
    capture order, the final norm for HF index -1, and the zero feature (the
    projection of feat = 0: position 0 and rows without a target state)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float
    plan: LayerPlan
    final_norm: torch.nn.Module | None
    target_hidden: int

    @classmethod
    def from_state(
        cls,
        state: dict[str, torch.Tensor],
        scale: float,
        plan: LayerPlan,
        final_norm: torch.nn.Module | None,
        target_hidden: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> TargetProjection:
        """From ``load_projection``'s checked tensors (HF block order)."""
        weight = permute_projection(state["weight"].float(), plan, target_hidden).to(device, dtype)
        bias = state.get("bias")
        return cls(weight, None if bias is None else bias.to(device, dtype), scale, plan, final_norm, target_hidden)

    @property
    def zero_feature(self) -> torch.Tensor:
        if self.bias is None:
            return self.weight.new_zeros(self.weight.shape[0])
        return self.scale * self.bias

    def __call__(self, captured: torch.Tensor) -> torch.Tensor:
        """Projected features of captured target rows (normed block modified in place)."""
        return project(captured, self.weight, self.bias, self.scale, self.plan, self.final_norm, self.target_hidden)


class FeatureCarry:
    """Per-request projected feature of the last verified target row, kept
    across steps in fixed slots (requests move around vLLM's batch).

    A k = 0 step only stashes the raw captured row (``stash``); the first
    drafting step projects what its requests stashed (``resolve``), so a long
    k = 0 stretch pays one projection, not one per step."""

    def __init__(self, width: int, dtype: torch.dtype, device: torch.device, capacity: int = 256) -> None:
        self.value = torch.zeros(capacity, width, dtype=dtype, device=device)
        self.position = torch.full((capacity,), -2, dtype=torch.long, device=device)
        self.raw: torch.Tensor | None = None  # [capacity, captured width], allocated at the first stash
        self._stashed: set[int] = set()  # slots whose newest state is in raw, not yet in value
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def host_slots(self, req_ids: list[str], live: object) -> list[int]:
        """Slots of ``req_ids`` (new ones allocated); requests no longer in
        ``live`` (finished or preempted) give their slots back."""
        for req_id in [r for r in self._slot_of if r not in live]:
            slot = self._slot_of.pop(req_id)
            self.position[slot] = -2
            self._stashed.discard(slot)
            self._free.append(slot)
        for req_id in req_ids:
            if req_id not in self._slot_of:
                if not self._free:
                    self._grow()
                self._slot_of[req_id] = self._free.pop()
        return [self._slot_of[r] for r in req_ids]

    def stash(self, slots: list[int], captured: torch.Tensor, positions: torch.Tensor) -> None:
        """Keep the raw captured rows (not projected yet) as these slots' newest state."""
        if self.raw is None or self.raw.shape[1] != captured.shape[1]:
            self.raw = captured.new_zeros(self.value.shape[0], captured.shape[1])
        index = self.on_device(slots)
        self.raw[index] = captured
        self.position[index] = positions.long()
        self._stashed.update(slots)

    def resolve(self, slots: list[int], projection: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Project the stashed rows of ``slots`` into ``value``."""
        todo = self._stashed.intersection(slots)
        if not todo:
            return
        assert self.raw is not None
        index = self.on_device(sorted(todo))
        self.value[index] = projection(self.raw[index])
        self._stashed -= todo

    def on_device(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.long).to(self.value.device, non_blocking=True)

    def _grow(self) -> None:
        old = self.value.shape[0]
        self.value = torch.cat([self.value, torch.zeros_like(self.value)])
        self.position = torch.cat([self.position, torch.full_like(self.position, -2)])
        if self.raw is not None:
            self.raw = torch.cat([self.raw, torch.zeros_like(self.raw)])
        self._free.extend(range(2 * old - 1, old - 1, -1))


def fuse_features(
    projected: torch.Tensor,
    target_positions: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_rejected: torch.Tensor | None,
    extra_slots: int,
    num_draft_rows: int,
    zero_feature: torch.Tensor,
    carry: FeatureCarry,
    slots: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Write each draft row's feature into ``out[:num_draft_rows]`` and move
    the carried state forward to this step's last verified rows."""
    source_row, first_row, last_valid = draft_row_sources(query_start_loc, num_rejected, extra_slots, num_draft_rows)
    rows = out[:num_draft_rows]
    rows.copy_(projected[source_row])
    start_pos = target_positions[query_start_loc[:-1].long()].long()
    carried_ok = carry.position[slots] == start_pos - 1
    rows[first_row] = torch.where(carried_ok.unsqueeze(1), carry.value[slots], zero_feature.expand(slots.numel(), -1))
    carry.value[slots] = projected[last_valid]
    carry.position[slots] = target_positions[last_valid].long()
