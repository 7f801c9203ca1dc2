"""Token counts of eager CPU forwards are rounded up to a few sizes (``vllm_pard2.eager_padding``)."""

from __future__ import annotations

from vllm_pard2.eager_padding import EXACT_LIMIT, padded_num_tokens

LIMIT = 4096


def test_small_counts_run_as_they_are() -> None:
    assert [padded_num_tokens(n, LIMIT) for n in range(1, EXACT_LIMIT + 1)] == list(range(1, EXACT_LIMIT + 1))


def test_larger_counts_round_up_to_few_sizes_with_bounded_padding() -> None:
    sizes = {padded_num_tokens(n, LIMIT) for n in range(EXACT_LIMIT + 1, LIMIT + 1)}
    assert len(sizes) <= 30  # oneDNN keeps 32 primitives per linear layer
    assert {24, 32, 48, 64, 80, 144 + 16, 4096} <= sizes
    for n in range(EXACT_LIMIT + 1, LIMIT + 1):
        size = padded_num_tokens(n, LIMIT)
        assert n <= size <= max(n + 7, 1.25 * n), n
        assert padded_num_tokens(size, LIMIT) == size  # a size is its own size


def test_padding_never_passes_the_buffers() -> None:
    assert padded_num_tokens(100, 100) == 100
    assert padded_num_tokens(97, 100) == 100
    assert padded_num_tokens(120, 100) == 120  # never below the real count
