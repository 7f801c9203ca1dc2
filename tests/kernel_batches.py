"""Random drafter-step batches for testing and benchmarking the kernels (CPU or GPU).

``random_batch(seed)`` builds a target step's rows like vLLM's V1 runner hands
them to the proposer: decodes of 1 + k rows with 0..k rejected drafts, prefill
chunks, start positions that sometimes run past ``max_model_len``, and a
shuffled, strided block table. Used by tests/test_kernels.py (imported as
``kernel_batches``, like ``engines``: pytest puts tests/ on ``sys.path``, and so
does running tests/test_kernels.py as the Triton-interpreter subprocess).
"""

from __future__ import annotations

import dataclasses

import torch

from vllm_pard2.kernels.reference import DraftInputs, draft_input_sizes

MASK_TOKEN_ID = 997


def random_batch(seed: int, contiguous_block_table: bool = False) -> dict:
    """A target step's rows: a mix of decodes (1 + k rows, some rejected) and
    prefill chunks, start positions that sometimes run past max_model_len, and a
    shuffled (optionally strided) block table."""
    gen = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    k = randint(1, 8)
    batch_size = randint(1, 9)
    block_size = [4, 16][randint(0, 1)]
    max_model_len = randint(24, 160)
    blocks_per_request = -(-max_model_len // block_size)
    counts, rejected, starts = [], [], []
    for _ in range(batch_size):
        if randint(0, 3) == 0:  # prefill chunk
            counts.append(randint(1, 40))
            rejected.append(0)
        else:  # decode: last bonus + k drafts, some rejected
            counts.append(1 + k)
            rejected.append(randint(0, k))
        starts.append(randint(0, max_model_len + 4))  # past the end sometimes
    query_start_loc = torch.tensor([0] + counts).cumsum(0).to(torch.int32)
    total = int(query_start_loc[-1])
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, counts, strict=True)]).to(torch.int64)
    blocks = torch.randperm(batch_size * blocks_per_request + 3, generator=gen)[: batch_size * blocks_per_request]
    padded = torch.zeros(batch_size + 2, blocks_per_request + 3, dtype=torch.int32)
    padded[:batch_size, :blocks_per_request] = blocks.view(batch_size, blocks_per_request).to(torch.int32)
    block_table = padded[:batch_size, :blocks_per_request]
    if contiguous_block_table:
        block_table = block_table.contiguous()
    return dict(
        target_token_ids=torch.randint(0, 1000, (total,), generator=gen, dtype=torch.int32),
        target_positions=positions,
        next_token_ids=torch.randint(0, 1000, (batch_size,), generator=gen, dtype=torch.int32),
        query_start_loc=query_start_loc,
        num_rejected=torch.tensor(rejected, dtype=torch.int32) if any(rejected) or randint(0, 1) else None,
        seq_lens=(torch.tensor(starts) + torch.tensor(counts)).to(torch.int32),
        block_table=block_table,
        num_speculative_tokens=k,
        mask_token_id=MASK_TOKEN_ID,
        block_size=block_size,
        max_model_len=max_model_len,
        max_query_len=max(counts),
    )


def as_dict(result) -> dict[str, torch.Tensor]:
    return {field.name: getattr(result, field.name) for field in dataclasses.fields(result)}


def sentinel_buffers(batch: dict, spare: int = 5) -> DraftInputs:
    """Persistent output buffers larger than the batch needs, filled with a sentinel."""
    sizes = draft_input_sizes(
        batch["target_token_ids"].shape[0], batch["next_token_ids"].shape[0], batch["num_speculative_tokens"]
    )
    dtypes = dict(positions=torch.int64, slot_mapping=torch.int64, is_rejected=torch.bool, is_masked=torch.bool)
    return DraftInputs(
        **{
            name: torch.full((size + spare,), 1 if name.startswith("is_") else -9, dtype=dtypes.get(name, torch.int32))
            for name, size in sizes.items()
        }
    )


def tails_untouched(buffers: DraftInputs, spare: int = 5) -> bool:
    return all(
        bool((getattr(buffers, f.name)[-spare:] == (1 if f.name.startswith("is_") else -9)).all())
        for f in dataclasses.fields(buffers)
    )
