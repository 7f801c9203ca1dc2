"""pard2 drafter-step kernels: Triton == torch reference == vLLM's in-tree parallel drafting.

- The torch reference is checked against vLLM's own CPU path for the same
  inputs: ``copy_and_expand_eagle_inputs_kernel`` (its C++ replacement, called
  through vLLM's adapter), ``compute_new_slot_mapping`` and
  ``extend_all_queries_by_N``.
- The Triton kernels run on CPU under ``TRITON_INTERPRET=1`` in a subprocess
  (Triton picks interpreter mode when a kernel is defined, so the flag must be
  set before our kernel modules are imported) and are compared with the
  reference on the same random batches.
- A multi-step simulation of draft KV written through ``slot_mapping`` checks
  the no-copy rollback: after every step, each request's committed draft-KV
  positions hold exactly its tokens and the mask slots after them hold masks.

No vLLM engine starts here (no engine lock needed).
    python tests/test_kernels.py --dump OUT.pt   # the Triton side, run by the tests
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_batches import (
    MASK_TOKEN_ID,
    as_dict,
    random_batch,
    sentinel_buffers,
    tails_untouched,
)

from vllm_pard2.kernels import (
    NO_FEATURE_ROW,
    PADDING_SLOT_ID,
    DraftInputs,
    build_draft_inputs,
    gather_draft_features,
)

NUM_RANDOM_BATCHES = 40


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, f"{label}: {name} dtype"
        assert torch.equal(actual[name], value), f"{label}: {name}\n{actual[name]}\n!=\n{value}"


def test_random_batches_cover_the_edge_cases() -> None:
    seen = set()
    for seed in range(NUM_RANDOM_BATCHES):
        batch = random_batch(seed)
        k, rejected = batch["num_speculative_tokens"], batch["num_rejected"]
        draft = build_draft_inputs(**batch, impl="torch")
        lengths = batch["query_start_loc"].diff()
        seen |= {"k=1"} if k == 1 else set()
        seen |= (
            {"past max_model_len"}
            if ((draft.positions >= batch["max_model_len"]) & ~draft.is_rejected).any()
            else set()
        )
        seen |= {"no rejected tensor"} if rejected is None else set()
        seen |= (
            {"all drafts rejected"} if rejected is not None and ((rejected == k) & (lengths == k + 1)).any() else set()
        )
        seen |= {"prefill chunk"} if (lengths > k + 1).any() else set()
        seen |= {"strided block table"} if not batch["block_table"].is_contiguous() else set()
    assert seen == {
        "k=1",
        "past max_model_len",
        "no rejected tensor",
        "all drafts rejected",
        "prefill chunk",
        "strided block table",
    }


# --- torch reference vs vLLM's in-tree parallel drafting ------------------------------------------


def vllm_in_tree(batch: dict) -> dict[str, torch.Tensor]:
    """vLLM 0.32's own first-pass draft inputs (CPU kernels) for the same batch."""
    from vllm.platforms import current_platform
    from vllm.utils.cpu_triton_utils import _copy_and_expand_eagle_inputs_kernel_impl
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.spec_decode.utils import compute_new_slot_mapping, extend_all_queries_by_N

    # Registers torch.ops._C from the build this CPU runs (_C needs AVX512-BF16, _C_AVX2 does not).
    current_platform.import_kernels()
    k = batch["num_speculative_tokens"]
    qsl = batch["query_start_loc"]
    batch_size = len(qsl) - 1
    total_in = batch["target_token_ids"].shape[0]
    total_out = total_in + batch_size * k
    rejected = (
        batch["num_rejected"] if batch["num_rejected"] is not None else torch.zeros(batch_size, dtype=torch.int32)
    )
    out = dict(
        input_ids=torch.full((total_out,), -7, dtype=torch.int32),
        positions=torch.full((total_out,), -7, dtype=torch.int64),
        is_rejected=torch.zeros(total_out, dtype=torch.bool),
        is_masked=torch.zeros(total_out, dtype=torch.bool),
        sample_indices=torch.full((batch_size * k,), -7, dtype=torch.int32),
    )
    _copy_and_expand_eagle_inputs_kernel_impl(
        batch["target_token_ids"],
        batch["target_positions"],
        batch["next_token_ids"],
        out["input_ids"],
        out["positions"],
        out["is_rejected"],
        out["is_masked"],
        out["sample_indices"],
        torch.empty(total_in, dtype=torch.int32),
        qsl,
        (qsl[1:] - 1 - rejected).to(torch.int32),
        0,
        batch["mask_token_id"],
        total_in,
        k,
        False,
    )
    cad = CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl.clone(),
        seq_lens=batch["seq_lens"],
        num_reqs=batch_size,
        num_actual_tokens=total_in,
        max_query_len=batch["max_query_len"],
        max_seq_len=int(batch["seq_lens"].max()),
        block_table_tensor=batch["block_table"].contiguous(),
        slot_mapping=torch.empty(total_in, dtype=torch.int64),
    )
    out["slot_mapping"] = compute_new_slot_mapping(
        cad=cad,
        new_positions=out["positions"],
        is_rejected_token_mask=out["is_rejected"],
        block_size=batch["block_size"],
        num_new_tokens=k,
        max_model_len=batch["max_model_len"],
    )
    extended = extend_all_queries_by_N(
        cad, N=k, arange=torch.arange(batch_size + 1, dtype=torch.int32), new_slot_mapping=out["slot_mapping"]
    )
    out["query_start_loc"] = extended.query_start_loc
    out["seq_lens"] = extended.seq_lens
    return out


@pytest.mark.parametrize("seed", range(NUM_RANDOM_BATCHES))
def test_reference_matches_vllm_in_tree(seed: int) -> None:
    batch = random_batch(seed, contiguous_block_table=True)
    expected = vllm_in_tree(batch)
    ours = as_dict(build_draft_inputs(**batch, impl="torch"))
    assert_same({name: ours[name].to(value.dtype) for name, value in expected.items()}, expected, f"seed {seed}")


# --- Triton (interpreter) vs torch reference ----------------------------------------------------------


def triton_results(seeds: range) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Run the Triton kernel on the random batches in an interpreter subprocess."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pard2_triton_kernels_{os.getpid()}.pt"
    env = dict(os.environ, TRITON_INTERPRET="1")
    completed = subprocess.run(
        [sys.executable, __file__, "--dump", str(out_path), "--seeds", str(seeds.start), str(seeds.stop)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    try:
        return torch.load(out_path)
    finally:
        out_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def interpreted() -> list[dict[str, dict[str, torch.Tensor]]]:
    return triton_results(range(NUM_RANDOM_BATCHES))


@pytest.mark.parametrize("seed", range(NUM_RANDOM_BATCHES))
def test_triton_matches_reference(interpreted, seed: int) -> None:
    batch = random_batch(seed)
    reference = build_draft_inputs(**batch, impl="torch")
    assert_same(interpreted[seed]["draft_inputs"], as_dict(reference), f"draft inputs, seed {seed}")
    assert_same(interpreted[seed]["draft_inputs_out"], as_dict(reference), f"out= buffers, seed {seed}")
    assert interpreted[seed]["tails_untouched"]


@pytest.mark.parametrize("seed", range(4))
def test_reference_writes_into_persistent_buffers(seed: int) -> None:
    batch = random_batch(seed)
    buffers = sentinel_buffers(batch)
    result = build_draft_inputs(**batch, out=buffers, impl="torch")
    assert_same(as_dict(result), as_dict(build_draft_inputs(**batch, impl="torch")), f"seed {seed}")
    assert result.input_ids.data_ptr() == buffers.input_ids.data_ptr() and tails_untouched(buffers)
    with pytest.raises(ValueError, match="this batch needs"):
        build_draft_inputs(**batch, out=DraftInputs(**{n: b[:1] for n, b in as_dict(buffers).items()}), impl="torch")


# --- semantics checked directly --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_feature_rows_point_at_previous_position(seed: int) -> None:
    """TD mode: a row at position p reads the target state at p-1 of its own request;
    masks read the bonus token's feature; first rows and pads read the carried feature."""
    batch = random_batch(seed)
    draft = build_draft_inputs(**batch, impl="torch")
    qsl, k = batch["query_start_loc"].long(), batch["num_speculative_tokens"]
    target_positions = batch["target_positions"]
    for request in range(len(qsl) - 1):
        rows = range(int(draft.query_start_loc[request]), int(draft.query_start_loc[request + 1]))
        target_rows = range(int(qsl[request]), int(qsl[request + 1]))
        bonus_row = int(draft.sample_indices[request * k])
        assert int(draft.feature_rows[rows[0]]) == NO_FEATURE_ROW
        carry = int(draft.carry_rows[request])
        assert carry in target_rows and int(target_positions[carry]) == int(draft.positions[bonus_row]) - 1
        for row in rows[1:]:
            feature = int(draft.feature_rows[row])
            if draft.is_rejected[row]:
                assert feature == NO_FEATURE_ROW
            elif draft.is_masked[row]:
                assert feature == carry
            else:
                assert feature in target_rows and int(target_positions[feature]) == int(draft.positions[row]) - 1


@pytest.mark.parametrize("seed", range(6))
def test_feature_rows_match_the_proposers_td_mapping(seed: int) -> None:
    """Same sources as the TD proposer's torch mapping (pads are don't-care there and here)."""
    from vllm_pard2.proposer import target_features

    batch = random_batch(seed)
    draft = build_draft_inputs(**batch, impl="torch")
    source_row, first_row, last_valid = target_features.draft_row_sources(
        batch["query_start_loc"], batch["num_rejected"], batch["num_speculative_tokens"], draft.input_ids.shape[0]
    )
    own = (draft.feature_rows >= 0) & ~draft.is_rejected
    assert torch.equal(source_row[own], draft.feature_rows[own].long())
    assert torch.equal(first_row, draft.query_start_loc[:-1].long())
    assert torch.equal(last_valid, draft.carry_rows.long())


@pytest.mark.parametrize("seed", range(6))
def test_gather_draft_features(seed: int) -> None:
    batch = random_batch(seed)
    draft = build_draft_inputs(**batch, impl="torch")
    total_in, batch_size = batch["target_token_ids"].shape[0], batch["next_token_ids"].shape[0]
    target_features = torch.randn(total_in, 5)
    carried = torch.randn(batch_size, 5)
    features = gather_draft_features(draft, target_features, carried)
    for row in range(features.shape[0]):
        request, feature_row = int(draft.request_of_row[row]), int(draft.feature_rows[row])
        assert int(draft.query_start_loc[request]) <= row < int(draft.query_start_loc[request + 1])
        if int(draft.positions[row]) == 0:
            expected = torch.zeros(5)
        elif feature_row == NO_FEATURE_ROW:
            expected = carried[request]
        else:
            expected = target_features[feature_row]
        assert torch.equal(features[row], expected), row


def test_draft_kv_rollback_needs_no_copy() -> None:
    """Simulate 30 decode steps of 5 requests with random acceptance, writing a fake
    draft KV (token per slot) from build_draft_inputs' slot mapping. After every step
    each request's committed positions hold exactly its token sequence and the k-1
    positions after them (scratch) hold masks, which the next step overwrites in
    place: rolling back rejected masks needs no copy and no free."""
    gen = torch.Generator().manual_seed(1)
    k, block_size, max_model_len, num_requests = 4, 4, 512, 5
    blocks_per_request = max_model_len // block_size
    block_table = torch.randperm(num_requests * blocks_per_request, generator=gen).view(num_requests, -1).int()
    kv_tokens = torch.full((num_requests * blocks_per_request * block_size,), -1, dtype=torch.int64)
    sequences = [torch.randint(0, 900, (int(torch.randint(1, 20, (1,), generator=gen)),), generator=gen).tolist()]
    sequences += [torch.randint(0, 900, (3 + 5 * i,), generator=gen).tolist() for i in range(num_requests - 1)]
    queries = [list(seq) for seq in sequences]  # prefill: the whole prompt, nothing rejected
    rejected = [0] * num_requests
    for step in range(30):
        bonus = torch.randint(0, 900, (num_requests,), generator=gen)
        starts = [len(seq) - len(query) for seq, query in zip(sequences, queries, strict=True)]
        counts = [len(query) for query in queries]
        qsl = torch.tensor([0] + counts).cumsum(0).int()
        draft = build_draft_inputs(
            target_token_ids=torch.tensor(sum(queries, [])).int(),
            target_positions=torch.cat([torch.arange(s, s + n) for s, n in zip(starts, counts, strict=True)]),
            next_token_ids=bonus.int(),
            query_start_loc=qsl,
            num_rejected=torch.tensor(rejected).int(),
            seq_lens=(torch.tensor(starts) + torch.tensor(counts)).int(),
            block_table=block_table,
            num_speculative_tokens=k,
            mask_token_id=MASK_TOKEN_ID,
            block_size=block_size,
            max_model_len=max_model_len,
            impl="torch",
        )
        for i in range(num_requests):  # history + verified part of the query, then the bonus
            sequences[i] = sequences[i][: starts[i] + counts[i] - rejected[i]] + [int(bonus[i])]
        writes = draft.slot_mapping != PADDING_SLOT_ID
        kv_tokens[draft.slot_mapping[writes]] = draft.input_ids[writes].long()
        for i, seq in enumerate(sequences):
            assert len(seq) + k - 1 <= max_model_len  # the scratch below is fully written
            positions = torch.arange(len(seq) + k - 1)
            slots = block_table[i, positions // block_size].long() * block_size + positions % block_size
            assert kv_tokens[slots[: len(seq)]].tolist() == seq, f"step {step} request {i}: history"
            assert (kv_tokens[slots[len(seq) :]] == MASK_TOKEN_ID).all(), f"step {step} request {i}: scratch"
        # Target verification of the k drafts: accept a random prefix (drafts are random tokens).
        accepted = torch.randint(0, k + 1, (num_requests,), generator=gen).tolist()
        drafts = torch.randint(0, 900, (num_requests, k), generator=gen).tolist()
        queries = [[seq[-1]] + drafts[i] for i, seq in enumerate(sequences)]  # the bonus leads the query
        rejected = [k - a for a in accepted]
        sequences = [seq + drafts[i] for i, seq in enumerate(sequences)]  # the target step's full token list


# --- the Triton side, run in a subprocess with TRITON_INTERPRET=1 -----------------------------------


def _dump_triton(out_path: str, first_seed: int, stop_seed: int) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    results = []
    for seed in range(first_seed, stop_seed):
        batch = random_batch(seed)
        draft = build_draft_inputs(**batch, impl="triton")
        buffers = sentinel_buffers(batch)
        into_buffers = build_draft_inputs(**batch, out=buffers, impl="triton")
        results.append(
            {
                "draft_inputs": as_dict(draft),
                "draft_inputs_out": as_dict(into_buffers),
                "tails_untouched": tails_untouched(buffers),
            }
        )
    torch.save(results, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dump", required=True)
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, NUM_RANDOM_BATCHES])
    cli = parser.parse_args()
    _dump_triton(cli.dump, *cli.seeds)
