"""Adaptive k: each engine step, the k in 0..K that measured step costs and the
running acceptance say is fastest (docs/batch_aware_k.md).

Nothing is tuned offline. The engine reports, per step, the batch size, how many
drafts it verified and drafted, and the step's wall time; the scheduler reports
each request's drafts and accepted drafts. From those:

- Acceptance: ``AcceptanceTracker`` (per-position conditional rates, EMA).
- Cost: per batch-size bucket (powers of two) and per k, an EMA of the wall time
  of *clean* steps: pure decode steps that verified as many drafts as they
  drafted. In vLLM V1 the k chosen at step t is drafted at the end of step t and
  verified in step t+1, so a step that changes k mixes two ks and is not a
  sample of either. Ks never measured in a bucket are interpolated linearly
  between measured ones; the two ends (0 and K) are measured first
  (exploration runs of ``run_steps`` steps).
- Choice: ``choose_k`` (argmax of modelled tokens/s, ties to the smaller k), then
  hysteresis: the current k is kept unless another beats it by
  ``switch_margin``, and a new k is held for ``dwell_steps`` steps.
- Probes: a k below K leaves positions above it unobserved, and a k = 0 stretch
  observes nothing, so every ``probe_interval`` steps (per bucket) the
  controller drafts K for two steps (acceptance of every position, and one clean
  cost sample), or, when drafting is modelled to pay only a little, k = 0 for two
  steps (a fresh plain-decoding cost). A probe that does not change
  the decision doubles the bucket's interval (up to ``probe_max_interval``), so
  probing where drafting cannot pay costs less and less; a probe that changes
  it resets the interval. The interval is also at least what keeps a K probe's
  extra time within ``probe_budget`` (1 %) of the time between probes.
- Cold samples: a k's first samples in a bucket pay first-use work (new tensor
  shapes: oneDNN primitives on CPU, kernel selection on GPU; a bucket's first K
  step at batch 16 measured 30 ms against 13 ms warm), and so do the
  exploration run's (allocator and caches warming up). They are provisional:
  the next sample of that k replaces them where it is faster, and a
  provisional k other than the decision is probed again after
  ``cold_probe_interval`` steps. Taken at face value, one cold K sample kept
  the main job's batch of 16 at k = 0 for good (the probe budget then spaced
  K probes more than a thousand steps apart).
- Cold ends: an end (0 or K) that a bucket knows only from a smaller batch's
  bucket, or only from provisional samples, is measured by a probe after
  ``cold_probe_interval`` steps, even when drafting is modelled to pay well.
  Otherwise a borrowed or warm-up cost that made k = 0 look slow (a
  batch-1 warm-up request, where drafting is nearly free, then a batch of 16)
  would keep the controller drafting forever. An end borrowed from a larger
  batch's bucket waits for the bucket's probe interval: drafting costs a
  smaller batch at most what it cost the larger one, and a batch draining
  towards its last requests passes through such buckets in a few steps (a K
  probe there cost the main job's batch-16 run about 7 %).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vllm_pard2.schedule.k_policy import AcceptanceTracker, CostTable, _interp, choose_k, expected_tokens


@dataclass
class AdaptiveKSettings:
    k_max: int
    switch_margin: float = 0.05  # relative modelled gain needed to leave the current k
    min_gain: float = 0.02  # a larger k must beat the best smaller one by this much
    dwell_steps: int = 4  # steps a new decision is held (clean cost samples, no flicker)
    run_steps: int = 3  # exploration run: one transition step, then clean ones
    cost_decay: float = 0.8  # weight of the old cost estimate per clean step
    acceptance_decay: float = 0.98  # per request-step
    acceptance_prior: float = 0.7
    probe_steps: int = 2  # a probe run: one transition step, one clean one
    probe_min_interval: int = 32
    cold_probe_interval: int = 3  # steps before a bucket measures an end it has only borrowed
    probe_max_interval: int = 512
    probe_gain_limit: float = 1.25  # no k = 0 probe when drafting is modelled this much faster
    probe_budget: float = 0.01  # a probe's extra cost, as a share of the time between probes
    probe_budget_max_interval: int = 4096


STALE_AFTER = 8  # clean samples of other ks since a k's last one


def batch_bucket(batch_size: int) -> int:
    """Cost bucket of a batch size: 1, 2-3, 4-7, 8-15, ... (step cost is smooth in B)."""
    return max(int(batch_size), 1).bit_length()


@dataclass
class BucketCosts:
    """Measured clean-step times of one batch-size bucket, and its probe clock."""

    probe_interval: int
    seconds: dict[int, float] = field(default_factory=dict)  # k -> EMA of a clean step
    samples: Counter = field(default_factory=Counter)
    steps_since_probe: int = 0
    last_sample: dict[int, int] = field(default_factory=dict)  # k -> index of its last sample
    provisional: set[int] = field(default_factory=set)  # ks known only from their exploration run
    decision: int | None = None  # this bucket's k outside runs (None until it first decides)

    def observe(self, k: int, seconds: float, decay: float, exploring: bool = False) -> None:
        old = self.seconds.get(k)
        if exploring or old is None:
            # A k's first samples in a bucket pay first-use work (new tensor shapes:
            # oneDNN primitives on CPU, kernel selection on GPU): provisional.
            self.provisional.add(k)
        elif k in self.provisional:
            # Warm-up and stalls both only ever slow a step down: the first warm
            # sample of a cold end replaces the estimate where it is faster.
            self.provisional.discard(k)
            seconds, old = min(seconds, old), None
        if old is not None:
            # A step stalled by something else (a co-tenant, GC) moves the estimate at
            # most 2x per sample; a real shift still gets through in a few steps.
            seconds = min(max(seconds, 0.5 * old), 2.0 * old)
            # A k measured again after a while (a probe) is stale: the new sample counts half.
            if self.samples.total() - self.last_sample.get(k, 0) > STALE_AFTER:
                decay = min(decay, 0.5)
        self.seconds[k] = seconds if old is None else decay * old + (1.0 - decay) * seconds
        self.samples[k] += 1
        self.last_sample[k] = self.samples.total()

    def has_ends(self, k_max: int) -> bool:
        return 0 in self.seconds and k_max in self.seconds

    def step_seconds(self, k_max: int) -> list[float]:
        """Cost of every k in 0..k_max: measured, else linear between measured ks."""
        ks = sorted(self.seconds)
        values = [self.seconds[k] for k in ks]
        return [self.seconds[k] if k in self.seconds else _interp(ks, values, k) for k in range(k_max + 1)]

    def borrowed_seconds(self, donor: BucketCosts, k_max: int, growth: float = 1.0) -> list[float]:
        """Own measurements, the other ks from ``donor``'s cost curve scaled to match
        the most-sampled own k (a bucket's decision depends only on cost ratios).
        ``growth`` multiplies the donor's drafting cost (each k's cost above k = 0):
        a bucket of larger batches assumes drafting costs grow with the batch, as on
        a compute-bound target, until it has measured its own."""
        curve = donor.step_seconds(k_max)
        curve = [curve[0] + growth * (c - curve[0]) for c in curve]
        if not self.seconds:
            return curve
        ref = max(self.seconds, key=self.samples.__getitem__)
        scale = self.seconds[ref] / max(curve[ref], 1e-12)
        return [self.seconds.get(k, scale * c) for k, c in enumerate(curve)]


class AdaptiveK:
    """Per-step k controller. ``choose(B)`` when the scheduler decides a step;
    ``observe_request`` per verified request; ``end_step`` once per finished step."""

    def __init__(self, settings: AdaptiveKSettings) -> None:
        if settings.k_max < 1:
            raise ValueError("adaptive k needs num_speculative_tokens >= 1")
        self.settings = settings
        self.k_max = settings.k_max
        self.tracker = AcceptanceTracker(self.k_max, settings.acceptance_decay, settings.acceptance_prior)
        self.buckets: dict[int, BucketCosts] = {}
        self.decision = self.k_max  # the last chosen bucket's; vLLM's own k until measured
        self.switches = 0
        self.probes = 0
        self.last_k = self.k_max
        self.last_rates: list[float] = []  # modelled tokens/s per k at the last decision
        self._run_k = self.k_max
        self._run_left = 0
        self._run_kind: str | None = None
        self._run_bucket: BucketCosts | None = None
        self._decision_before_probe = self.k_max
        self._verified: dict[tuple[int, int], int] = {}  # (drafts, accepted) -> request-steps, this step

    def choose(self, batch_size: int) -> int:
        self.last_k = self._choose(batch_size)
        return self.last_k

    def _choose(self, batch_size: int) -> int:
        key, bucket = batch_bucket(batch_size), self._bucket(batch_size)
        bucket.steps_since_probe += 1
        if self._run_bucket is not bucket:
            # A run (exploration, dwell, probe) belongs to its bucket: a batch of
            # another size ends it, and gets its own bucket's decision at once.
            self._run_left, self._run_kind = 0, None
        if self._run_left > 0:
            self._run_left -= 1
            return self._run_k
        finished_kind, self._run_kind = self._run_kind, None
        costs, donor = self._costs(bucket, key)
        if costs is None:
            missing = self.k_max if self.k_max not in bucket.seconds else 0
            return self._start_run(bucket, missing, "explore", self.settings.run_steps)
        table = CostTable.from_step_times([batch_size], [costs])
        choice = choose_k(batch_size, self.tracker.alpha, table, self.k_max, self.settings.min_gain)
        best, rates = choice.k, choice.tokens_per_s_by_k
        self.last_rates = rates
        if bucket.decision is None:
            bucket.decision = self.decision  # a new bucket starts from the last one's k
        self.decision = bucket.decision
        if finished_kind == "probe":  # runs end with their bucket, so the probe was this one's
            self._after_probe(bucket, rates)
        # Ends this bucket knows only from a smaller batch's bucket or from its cold
        # exploration run are measured once, soon, before the decision is trusted (and
        # before it moves on: a borrowed end keeps intermediate ks looking better than
        # they are). Ends borrowed from a larger batch's bucket wait for the bucket's
        # probe interval: drafting costs a smaller batch at most what it cost the
        # larger one, and a draining batch passes through such buckets in a few steps.
        borrowed = {0, self.k_max} - set(bucket.seconds)
        soon = bucket.provisional | (borrowed if donor is not None and donor < key else set())
        soon_ends = sorted(soon - {bucket.decision})
        cold = soon_ends + sorted((borrowed - soon) - {bucket.decision})  # the ends to measure, soon ones first
        cold_soon = bool(soon_ends)
        cold_due = cold_soon and bucket.steps_since_probe >= min(
            bucket.probe_interval, self.settings.cold_probe_interval
        )
        if (
            not cold_due
            and best != bucket.decision
            and rates[best] > rates[bucket.decision] * (1.0 + self.settings.switch_margin)
        ):
            bucket.decision = self.decision = best
            self.switches += 1
            return self._start_run(bucket, best, "dwell", self.settings.dwell_steps)
        if cold_soon:
            interval = min(bucket.probe_interval, self.settings.cold_probe_interval)
        elif cold:
            interval = bucket.probe_interval
        else:
            interval = max(bucket.probe_interval, self._budget_interval(bucket, costs))
        if bucket.steps_since_probe >= interval:
            bucket.steps_since_probe = 0
            target = cold[0] if cold else (self.k_max if bucket.decision < self.k_max else 0)
            if target > 0 or cold or rates[bucket.decision] < rates[0] * self.settings.probe_gain_limit:
                self.probes += 1
                self._decision_before_probe = bucket.decision
                # Two steps: the first verifies the old k's drafts (a transition), the
                # second is a clean sample of the probed k's cost; the drafts of K
                # verified in the second (and the step after) observe every position.
                steps = self.settings.probe_steps
                return self._start_run(bucket, target, "probe", steps)
        return bucket.decision

    def _budget_interval(self, bucket: BucketCosts, costs: list[float]) -> int:
        """Steps between probes that keep a K probe's extra cost within ``probe_budget``
        of plain decoding (a K step may cost several k = 0 steps on a compute-bound
        target; probing there must get rarer). Only from the bucket's own costs: a
        borrowed curve must not keep the bucket from measuring."""
        s = self.settings
        if not bucket.has_ends(self.k_max):
            return 0
        extra_steps = s.probe_steps * max(costs[self.k_max] / max(costs[0], 1e-12) - 1.0, 0.0)
        return min(int(extra_steps / s.probe_budget), s.probe_budget_max_interval)

    def _after_probe(self, bucket: BucketCosts, rates: list[float]) -> None:
        """Back off when the probe confirmed the decision, probe soon again when not."""
        s = self.settings
        best = max(range(len(rates)), key=rates.__getitem__)
        confirmed = best == self._decision_before_probe or (
            rates[best] <= rates[self._decision_before_probe] * (1.0 + s.switch_margin)
        )
        bucket.probe_interval = (
            min(2 * bucket.probe_interval, s.probe_max_interval) if confirmed else s.probe_min_interval
        )

    def _start_run(self, bucket: BucketCosts, k: int, kind: str, steps: int) -> int:
        self._run_bucket, self._run_k, self._run_kind, self._run_left = bucket, k, kind, steps - 1
        return k

    def _costs(self, bucket: BucketCosts, key: int) -> tuple[list[float] | None, int | None]:
        """(step cost per k of ``bucket``, number ``key``; the donor bucket's key or None).
        Its own curve once it has measured both ends; until then the nearest bucket's
        curve that has (no exploration run per batch size: an offline run drains
        through every bucket), its drafting cost doubled per bucket up (safe: a bigger
        batch starts near k = 0, not at the small batch's free K); None if no bucket has."""
        if bucket.has_ends(self.k_max):
            return bucket.step_seconds(self.k_max), None
        donors = [(abs(other - key), other) for other, b in self.buckets.items() if b.has_ends(self.k_max)]
        if not donors:
            return None, None
        donor = min(donors)[1]
        growth = 2.0 ** max(key - donor, 0)
        return bucket.borrowed_seconds(self.buckets[donor], self.k_max, growth=growth), donor

    def _bucket(self, batch_size: int) -> BucketCosts:
        key = batch_bucket(batch_size)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = BucketCosts(probe_interval=self.settings.probe_min_interval)
        return bucket

    def observe_request(self, num_drafts: int, num_accepted: int) -> None:
        """One request-step's verification: ``num_drafts`` drafts, the first
        ``num_accepted`` of them accepted (vLLM's spec-decode counters)."""
        if num_drafts > 0:  # vLLM: 0 <= num_accepted <= num_drafts
            key = (num_drafts, num_accepted)
            self._verified[key] = self._verified.get(key, 0) + 1

    def end_step(self, batch_size: int, k_verified: int | None, k_drafted: int, seconds: float | None) -> None:
        """A finished step: fold its acceptance in and, if it is a clean step
        (``k_verified == k_drafted``; ``None`` for steps with prefill), its cost."""
        if self._verified:
            reached, accepted = [0] * self.k_max, [0] * self.k_max
            for (drafts, acc), count in self._verified.items():
                for i in range(min(acc + 1, drafts, self.k_max)):
                    reached[i] += count
                for i in range(min(acc, self.k_max)):
                    accepted[i] += count
            self.tracker.observe_positions(reached, accepted)
            self._verified.clear()
        if seconds is not None and seconds > 0 and k_verified == k_drafted:
            bucket = self._bucket(batch_size)
            bucket.observe(k_drafted, seconds, self.settings.cost_decay, exploring=self._run_kind == "explore")

    def estimate(self, k: int) -> tuple[float, float]:
        """(tau, modelled speed-up over k = 0) of ``k`` at the last decision."""
        tau = expected_tokens(self.tracker.alpha, k)
        if not self.last_rates or self.last_rates[0] <= 0:
            return tau, 1.0
        return tau, self.last_rates[min(k, len(self.last_rates) - 1)] / self.last_rates[0]
