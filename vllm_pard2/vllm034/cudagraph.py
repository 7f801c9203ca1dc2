"""Every persistent buffer of the pard2 MRV2 draft pass, declared in one place.

A CUDA graph replays fixed addresses, so anything a captured draft pass reads
or writes must live in a buffer allocated once: a per-step tensor would leave a
replay reading stale memory (on the 0.32 path this turned drafts to garbage
while outputs stayed lossless). The draft input build writes straight into
these buffers, and the buffers vLLM's attention metadata builders read
(``InputBuffers``: input ids, positions, query starts, sequence lengths) are the
same tensors, not copies.

Status: the first GPU run is still to come (docs/vllm034.md). The speculator
runs its draft pass eagerly for that run; capturing it (a uniform decode step
has 2k+1 draft rows per request, so FULL graphs fit, as for DFlash) reads only
these buffers and is the next step after the eager pass is shown lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.worker.gpu.input_batch import InputBuffers

from vllm_pard2.kernels import DraftInputs


@dataclass
class Pard2Buffers:
    """The draft pass's persistent state; ``rows`` = target tokens + k per request."""

    input_buffers: InputBuffers  # what vLLM's attention metadata builders read
    draft_inputs: DraftInputs  # the layout build's outputs (shares input_buffers' tensors)
    slot_mappings: torch.Tensor  # [num KV cache groups, rows]: the draft group's row is written
    fused_embeds: torch.Tensor  # [rows, draft hidden]: embed(x) + feature (TD)
    sample_positions: torch.Tensor  # [max_num_reqs * k]: position of each sampled row
    sample_idx_mapping: torch.Tensor  # [max_num_reqs * k]: request-state slot, -1 = inert
    sample_columns: torch.Tensor  # [max_num_reqs * k]: draft index 0..k-1
    carry_value: torch.Tensor  # [max_num_reqs, draft hidden]: feature carried per request slot (TD)
    carry_position: torch.Tensor  # [max_num_reqs]: position whose state it is; -2 = none

    @classmethod
    def allocate(
        cls,
        *,
        max_num_reqs: int,
        max_num_tokens: int,
        num_speculative_tokens: int,
        num_kv_cache_groups: int,
        draft_hidden: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Pard2Buffers:
        k = num_speculative_tokens
        rows = max_num_tokens + max_num_reqs * k
        inputs = InputBuffers(max_num_reqs=max_num_reqs, max_num_tokens=rows, device=device)

        def per_row(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(rows, dtype=dtype, device=device)

        slot_mappings = torch.full((num_kv_cache_groups, rows), -1, dtype=torch.int64, device=device)
        draft_inputs = DraftInputs(
            input_ids=inputs.input_ids,
            positions=inputs.positions,
            slot_mapping=slot_mappings[0],  # re-pointed at the draft group in `use_group`
            is_rejected=inputs.is_padding,
            is_masked=per_row(torch.bool),
            sample_indices=torch.zeros(max_num_reqs * k, dtype=torch.int32, device=device),
            feature_rows=per_row(torch.int32),
            carry_rows=torch.zeros(max_num_reqs, dtype=torch.int32, device=device),
            query_start_loc=inputs.query_start_loc,
            seq_lens=inputs.seq_lens,
            request_of_row=per_row(torch.int32),
        )
        return cls(
            input_buffers=inputs,
            draft_inputs=draft_inputs,
            slot_mappings=slot_mappings,
            fused_embeds=torch.zeros(rows, draft_hidden, dtype=dtype, device=device),
            sample_positions=torch.zeros(max_num_reqs * k, dtype=torch.int64, device=device),
            sample_idx_mapping=torch.full((max_num_reqs * k,), -1, dtype=torch.int64, device=device),
            sample_columns=torch.arange(k, dtype=torch.int32, device=device).repeat(max_num_reqs),
            carry_value=torch.zeros(max_num_reqs, draft_hidden, dtype=dtype, device=device),
            carry_position=torch.full((max_num_reqs,), -2, dtype=torch.int64, device=device),
        )

    def use_group(self, group: int) -> None:
        """Write the draft's slot mapping into its KV cache group's row."""
        self.draft_inputs.slot_mapping = self.slot_mappings[group]
