"""Batch-aware k: per step, the number of drafts that maximises expected tokens/s.

Model (docs/batch_aware_k.md has the derivation):

- Acceptance. ``alpha[i]`` (i = 1..k_max) is the conditional probability that
  draft i is accepted given drafts 1..i-1 were, tracked as an exponential moving
  average of vLLM's spec-decode counters. With k drafts a request gains, per step,
  ``E[k] = 1 + sum_{i<=k} prod_{j<=i} alpha[j]`` tokens (the bonus token counts:
  E[k] is the mean acceptance length tau of that k).
- Cost. ``t_verify(B, n)``: one target forward of B requests with n query tokens
  each (n = k + 1); ``t_draft(B, k)``: the drafter's part of a step for k drafts
  (one parallel-draft forward of the real tokens plus k-1 masks). ``t_draft(B, 0)``
  is the cost of keeping the draft KV warm when no drafts are proposed (zero if the
  integration skips the drafter entirely and catches up later). Both come from
  measured tables, interpolated linearly in B (and n); past the grid, the last
  segment's slope (never below the last measured value).
- Choice. ``k* = argmax_k E[k] / (t_verify(B, k+1) + t_draft(B, k))`` over
  ``0..k_max``; k = 0 is plain decoding (E = 1), so the chosen k is never slower
  than no speculation *under the model*. A larger k must beat the best smaller one
  by ``min_gain`` (relative) to be taken, which keeps the choice stable against
  noise in the tables.
- Online use: ``vllm_pard2.schedule.adaptive.AdaptiveK`` fills the cost table from
  step times the engine measures and the acceptance from the scheduler's counters.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear cost lookup. Below the grid: the first value; above it: the last
    segment's slope, but never below the last value (a step does not get cheaper
    with more requests or tokens)."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return max(ys[-1], ys[-1] + slope * (x - xs[-1]))
    i = bisect.bisect_left(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class CostTable:
    """Measured step costs in seconds on a grid.

    ``verify[b][n]``: target forward, ``batch_sizes[b]`` requests of
    ``tokens_per_request[n]`` query tokens. ``draft[b][k]``: drafter cost for
    ``k`` drafts, k = 0..len(draft[b]) - 1.
    """

    batch_sizes: list[int]
    tokens_per_request: list[int]
    verify: list[list[float]]
    draft: list[list[float]]

    def __post_init__(self) -> None:
        if sorted(self.batch_sizes) != list(self.batch_sizes) or sorted(self.tokens_per_request) != list(
            self.tokens_per_request
        ):
            raise ValueError("batch_sizes and tokens_per_request must be increasing")
        if len(self.verify) != len(self.batch_sizes) or len(self.draft) != len(self.batch_sizes):
            raise ValueError("one verify row and one draft row per batch size")
        if any(len(row) != len(self.tokens_per_request) for row in self.verify):
            raise ValueError("verify rows must have one entry per tokens_per_request")

    @classmethod
    def from_step_times(cls, batch_sizes: list[int], step_seconds: list[list[float]]) -> CostTable:
        """A table from whole-step times ``step_seconds[b][k]`` (k = 0..k_max), e.g. the
        ``step_ms`` of ``benchmarks/bench_system.py`` runs at several k. The policy only
        needs ``t_verify + t_draft``, so the sum is stored as verification cost of k+1 tokens.
        ``step_seconds[b][0]`` must be the cost of a k = 0 step *as the integration runs it*
        (plain decoding plus whatever drafter work k = 0 still does)."""
        k_max = min(len(row) for row in step_seconds) - 1
        return cls(
            batch_sizes=list(batch_sizes),
            tokens_per_request=list(range(1, k_max + 2)),
            verify=[list(row[: k_max + 1]) for row in step_seconds],
            draft=[[0.0] * (k_max + 1) for _ in batch_sizes],
        )

    @property
    def k_max(self) -> int:
        return min(len(row) for row in self.draft) - 1

    def t_verify(self, batch_size: float, tokens: float) -> float:
        per_batch = [_interp(self.tokens_per_request, row, tokens) for row in self.verify]
        return max(_interp(self.batch_sizes, per_batch, batch_size), 0.0)

    def t_draft(self, batch_size: float, k: int) -> float:
        return max(_interp(self.batch_sizes, [row[k] for row in self.draft], batch_size), 0.0)

    def step_time(self, batch_size: float, k: int) -> float:
        return max(self.t_verify(batch_size, k + 1) + self.t_draft(batch_size, k), 1e-12)


def expected_tokens(alpha: Sequence[float], k: int) -> float:
    """Mean tokens per request-step with k drafts (bonus included), iid conditional rates."""
    total, survive = 1.0, 1.0
    for a in alpha[:k]:
        survive *= a
        total += survive
    return total


@dataclass
class KChoice:
    k: int
    tokens_per_s: float  # model estimate for the whole batch
    tokens_per_s_by_k: list[float]


def choose_k(batch_size: int, alpha: Sequence[float], costs: CostTable, k_max: int, min_gain: float = 0.02) -> KChoice:
    """The k in ``0..k_max`` maximising modelled tokens/s at this batch size."""
    k_max = min(k_max, costs.k_max, len(alpha))
    rates = [batch_size * expected_tokens(alpha, k) / costs.step_time(batch_size, k) for k in range(k_max + 1)]
    best = 0
    for k in range(1, k_max + 1):
        if rates[k] > rates[best] * (1.0 + min_gain):
            best = k
    return KChoice(k=best, tokens_per_s=rates[best], tokens_per_s_by_k=rates)


@dataclass
class AcceptanceTracker:
    """EMA of per-position conditional acceptance rates from vLLM's spec-decode counters."""

    k_max: int
    decay: float = 0.9
    prior: float = 0.7
    alpha: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.alpha:
            self.alpha = [self.prior] * self.k_max

    def observe(self, num_drafts: int, accepted_per_pos: Sequence[int]) -> None:
        """``num_drafts`` request-steps with ``len(accepted_per_pos)`` drafts each;
        ``accepted_per_pos[i]`` of them accepted draft i+1 (vLLM's per-position counter
        deltas). A position is updated only when its predecessor was accepted somewhere."""
        reached = [num_drafts] + list(accepted_per_pos[:-1])
        self.observe_positions(reached[: len(accepted_per_pos)], accepted_per_pos)

    def observe_positions(self, reached: Sequence[int], accepted: Sequence[int]) -> None:
        """``reached[i]`` request-steps drafted position i+1 with drafts 1..i all
        accepted; ``accepted[i]`` of them accepted it too. Unlike ``observe`` the
        request-steps may have drafted different k (a per-step k)."""
        for i, (n, a) in enumerate(zip(reached[: self.k_max], accepted, strict=False)):
            if n <= 0:
                continue
            rate = min(max(a / n, 0.0), 1.0)
            weight = self.decay ** min(n, 64)  # many samples move the average more
            self.alpha[i] = weight * self.alpha[i] + (1.0 - weight) * rate
