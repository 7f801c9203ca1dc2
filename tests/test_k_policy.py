"""Batch-aware k cost model (pure Python, no engine)."""

from __future__ import annotations

import random

import pytest

from vllm_pard2.schedule import AcceptanceTracker, CostTable, choose_k, expected_tokens

K_MAX = 8


def gpu_like_costs() -> CostTable:
    """Shaped like an 8B target on one GPU: verification is memory-bound (flat in
    tokens) at small batch and compute-bound (linear in tokens) at large batch."""
    batch_sizes = [1, 16, 64, 128]
    tokens = list(range(1, K_MAX + 2))
    weights_ms, per_token_ms = 12.0, 0.1
    verify = [[1e-3 * max(weights_ms, per_token_ms * b * n) for n in tokens] for b in batch_sizes]
    draft = [[1e-3 * (0.8 + (0.6 + 0.002 * b * (k + 1)) * (k > 0)) for k in range(K_MAX + 1)] for b in batch_sizes]
    return CostTable(batch_sizes, tokens, verify, draft)


def test_expected_tokens_counts_the_bonus() -> None:
    assert expected_tokens([0.5, 0.5], 0) == 1.0
    assert expected_tokens([0.5, 0.5], 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens([1.0] * 4, 4) == 5.0


def test_interpolation_and_extrapolation() -> None:
    costs = CostTable([1, 3], [1, 2], [[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 3.0]])
    assert costs.t_verify(2, 1.5) == pytest.approx(2.5)
    assert costs.t_verify(5, 1) == pytest.approx(5.0)  # slope of the last segment
    assert costs.t_verify(0, 1) == pytest.approx(1.0)  # below the grid: the first value
    falling = CostTable([1, 2], [1], [[2.0], [1.0]], [[0.0], [0.0]])
    assert falling.t_verify(10, 1) == pytest.approx(1.0)  # never below the last value
    assert costs.t_draft(2, 1) == pytest.approx(2.0)
    assert costs.k_max == 1


def test_small_batch_high_acceptance_drafts_many() -> None:
    assert choose_k(1, [0.9] * K_MAX, gpu_like_costs(), K_MAX).k == K_MAX


def test_large_batch_compute_bound_turns_speculation_off() -> None:
    assert choose_k(128, [0.5] * K_MAX, gpu_like_costs(), K_MAX).k == 0


def test_k_shrinks_as_batch_grows() -> None:
    costs, alpha = gpu_like_costs(), [0.8] * K_MAX
    ks = [choose_k(b, alpha, costs, K_MAX).k for b in (1, 16, 64, 128)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]


def test_never_slower_than_plain_decoding_under_the_model() -> None:
    rng = random.Random(0)
    for _ in range(300):
        batch_sizes = sorted(rng.sample(range(1, 257), 3))
        tokens = list(range(1, K_MAX + 2))
        verify = [sorted(rng.uniform(1e-3, 5e-2) for _ in tokens) for _ in batch_sizes]
        draft = [[0.0] + sorted(rng.uniform(1e-4, 2e-2) for _ in range(K_MAX)) for _ in batch_sizes]
        costs = CostTable(batch_sizes, tokens, verify, draft)
        alpha = [rng.random() for _ in range(K_MAX)]
        batch = rng.randint(1, 300)
        choice = choose_k(batch, alpha, costs, K_MAX)
        assert choice.tokens_per_s >= choice.tokens_per_s_by_k[0]
        assert choice.tokens_per_s >= max(choice.tokens_per_s_by_k) / 1.02 - 1e-9


def test_min_gain_prefers_the_smaller_k_on_near_ties() -> None:
    costs = CostTable([1], [1, 2], [[1.0, 1.0]], [[0.0, 0.0]])
    assert choose_k(1, [0.01], costs, 1).k == 0  # 1% more tokens: not worth it
    assert choose_k(1, [0.5], costs, 1).k == 1


def test_tracker_converges_to_observed_rates() -> None:
    tracker = AcceptanceTracker(k_max=3, prior=0.9)
    rng = random.Random(1)
    true_alpha = [0.8, 0.5, 0.25]
    for _ in range(200):
        drafts, accepted = 32, [0, 0, 0]
        for _ in range(drafts):
            for i, a in enumerate(true_alpha):
                if rng.random() >= a:
                    break
                accepted[i] += 1
        tracker.observe(drafts, accepted)
    assert tracker.alpha == pytest.approx(true_alpha, abs=0.12)


def test_tracker_leaves_unreached_positions_alone() -> None:
    tracker = AcceptanceTracker(k_max=3, prior=0.7)
    tracker.observe(10, [0, 0])
    assert tracker.alpha[0] < 0.7 and tracker.alpha[1:] == [0.7, 0.7]


def test_tracker_counts_positions_of_mixed_k_steps() -> None:
    """With a per-step k, request-steps draft different counts: a position's rate is
    accepted / reached, where reached counts only request-steps that drafted it."""
    tracker = AcceptanceTracker(k_max=3, decay=0.0, prior=0.5)  # decay 0: take the rate as is
    # 4 request-steps reached position 1 (3 accepted it); 2 of those drafted position 2.
    tracker.observe_positions([4, 2, 0], [3, 1, 0])
    assert tracker.alpha == pytest.approx([0.75, 0.5, 0.5])


def test_cost_table_from_measured_step_times() -> None:
    costs = CostTable.from_step_times([1, 64], [[0.010, 0.011, 0.012], [0.020, 0.030, 0.040]])
    assert costs.k_max == 2 and costs.step_time(1, 2) == pytest.approx(0.012)
    assert costs.step_time(32, 1) == pytest.approx(0.011 + (0.030 - 0.011) * 31 / 63)
    assert choose_k(1, [0.5, 0.5], costs, 2).k == 2  # 1.75 tokens for 20% more time
    assert choose_k(64, [0.5, 0.5], costs, 2).k == 0  # 1.5 tokens for 50% more time
