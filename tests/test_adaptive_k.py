"""The adaptive k controller on synthetic engines (pure Python, no vLLM engine).

``simulate`` plays vLLM V1's timing: the k chosen at step t is drafted at the
end of step t and verified in step t+1, so a step costs verify(k_{t-1}) +
draft(k_t), and acceptance arrives one step after the choice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

from vllm_pard2.schedule import AdaptiveK, AdaptiveKSettings
from vllm_pard2.schedule.engine import AdaptiveKLookup, AdaptiveKRuntime, verified_k

K = 8


@dataclass
class Engine:
    """Step costs in seconds and true per-position acceptance (may change with the step)."""

    verify: Callable[[int, int], float]  # (batch, tokens per request) -> s
    draft: Callable[[int, int], float]  # (batch, k) -> s
    alpha: Callable[[int], list[float]]  # step -> conditional acceptance per position
    noise: float = 0.0
    spikes: float = 0.0  # share of steps stalled 10x by something else (a co-tenant, GC)


@dataclass
class Trace:
    ks: list[int]
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def simulate(ctrl: AdaptiveK, engine: Engine, batch: int | Callable[[int], int], steps: int, seed: int = 0) -> Trace:
    rng = random.Random(seed)
    ks, tokens, seconds, pending = [], 0, 0.0, None
    for step in range(steps):
        b = batch(step) if callable(batch) else batch
        k = ctrl.choose(b)
        drafts = pending or 0
        for _ in range(b):
            accepted = 0
            for a in engine.alpha(step)[:drafts]:
                if rng.random() >= a:
                    break
                accepted += 1
            if drafts:
                ctrl.observe_request(drafts, accepted)
            tokens += 1 + accepted
        cost = (engine.verify(b, drafts + 1) + engine.draft(b, k)) * max(0.05, 1 + engine.noise * rng.gauss(0, 1))
        cost *= 10.0 if rng.random() < engine.spikes else 1.0
        ctrl.end_step(b, pending, k, cost)
        seconds += cost
        ks.append(k)
        pending = k
    return Trace(ks, tokens, seconds)


def compute_bound(b: int, n: int) -> float:
    """A CPU-like target: every query token costs the same."""
    return 1e-3 * (1 + 0.5 * b * n)


def memory_bound(b: int, n: int) -> float:
    """A small-batch GPU-like target: verifying k+1 tokens costs about one."""
    return 1e-2 * (1 + 0.002 * b * n)


def drafter(b: int, k: int) -> float:
    return 0.0 if k == 0 else 1e-3 * (0.5 + 0.2 * b)


def plain_decoding_rate(engine: Engine, b: int) -> float:
    return b / engine.verify(b, 1)


def controller(**overrides) -> AdaptiveK:
    return AdaptiveK(AdaptiveKSettings(k_max=K, **overrides))


def test_turns_drafting_off_when_it_cannot_pay() -> None:
    engine = Engine(compute_bound, drafter, lambda step: [0.4] * K, noise=0.05)
    ctrl = controller()
    trace = simulate(ctrl, engine, batch=16, steps=3000)
    tail = trace.ks[200:]
    assert tail.count(0) / len(tail) > 0.97, ctrl.buckets
    assert ctrl.decision == 0
    # Exploration and probes included: within a few percent of no speculation.
    assert trace.tokens_per_s >= 0.95 * plain_decoding_rate(engine, 16)


def test_drafts_k_max_when_it_clearly_pays() -> None:
    engine = Engine(memory_bound, drafter, lambda step: [0.9] * K, noise=0.05)
    ctrl = controller()
    trace = simulate(ctrl, engine, batch=2, steps=2000)
    tail = trace.ks[100:]
    assert tail.count(K) / len(tail) > 0.97
    assert trace.tokens_per_s > 3 * plain_decoding_rate(engine, 2)


def test_intermediate_k_when_late_drafts_rarely_survive() -> None:
    """First drafts accepted, later ones almost never: a few drafts beat 0 and K."""
    engine = Engine(compute_bound, lambda b, k: 0.0, lambda step: [0.95, 0.9] + [0.05] * (K - 2), noise=0.05)
    ctrl = controller()
    trace = simulate(ctrl, engine, batch=1, steps=2000)
    assert 1 <= ctrl.decision <= 3, ctrl.buckets
    assert trace.tokens_per_s > 1.3 * plain_decoding_rate(engine, 1)


def test_no_flicker_under_noisy_costs() -> None:
    """Near a tie between k = 0 and k = 1 (modelled within a few percent), 20 % step-time
    noise must not make k hop: decisions change rarely (a dozen times in 3000 steps,
    each held for ``dwell_steps``), k changes are mostly the short probes, and
    throughput stays at plain decoding or above."""

    def verify(b: int, n: int) -> float:
        return 1e-3 * (5 + 0.3 * b * n)

    for first_alpha in (0.55, 0.6, 0.65):
        engine = Engine(verify, drafter, lambda step, a=first_alpha: [a] + [0.1] * (K - 1), noise=0.2)
        for seed in range(2):
            ctrl = controller()
            trace = simulate(ctrl, engine, batch=8, steps=3000, seed=seed)
            changes = sum(a != b for a, b in zip(trace.ks, trace.ks[1:], strict=False))
            assert ctrl.switches <= 15 and changes <= 0.01 * len(trace.ks), (first_alpha, seed, ctrl.switches, changes)
            assert trace.tokens_per_s >= 0.96 * plain_decoding_rate(engine, 8)


def test_stalled_steps_do_not_flip_clear_decisions() -> None:
    """3 % of steps 10x slower (as on a shared CPU): off stays off, on stays on."""
    off = Engine(compute_bound, drafter, lambda step: [0.4] * K, noise=0.1, spikes=0.03)
    on = Engine(memory_bound, drafter, lambda step: [0.9] * K, noise=0.1, spikes=0.03)
    for seed in range(3):
        ctrl = controller()
        trace = simulate(ctrl, off, batch=16, steps=2000, seed=seed)
        assert trace.ks[200:].count(0) / 1800 > 0.95, (seed, ctrl.switches)
        ctrl = controller()
        trace = simulate(ctrl, on, batch=2, steps=2000, seed=seed)
        assert trace.ks[200:].count(K) / 1800 > 0.95, (seed, ctrl.switches)


def test_a_cold_start_sample_does_not_keep_drafting_on() -> None:
    """The engine's first steps run cold (allocator, caches, first-use kernels): here the
    k = 0 exploration steps cost 4x. Drafting looks 2x better than it is at first, so
    the controller drafts; the first probe re-measures k = 0 warm and turns drafting
    off for good (the case seen on the main job at batch 16)."""

    for seed in range(3):
        steps = [0]

        def cold(b: int, n: int, steps: list[int] = steps) -> float:
            steps[0] += 1  # simulate calls verify once per step
            return compute_bound(b, n) * (4.0 if 3 <= steps[0] - 1 < 6 else 1.0)

        engine = Engine(cold, drafter, lambda step: [0.6] * K, noise=0.05)
        ctrl = controller()
        ks = simulate(ctrl, engine, batch=16, steps=400, seed=seed).ks
        assert max(ks[6:40]) > 0, "the cold sample should first make drafting look worthwhile"
        assert ks[100:].count(0) / 300 > 0.97, (seed, ks[:100])
        assert ctrl.decision == 0


def test_the_first_step_at_a_new_shape_is_not_taken_as_the_cost_of_its_k() -> None:
    """The first step of each (batch size, drafts) shape pays first-use work (here
    15 ms, about 3x a step: on CPU each new token count builds oneDNN primitives
    for every linear layer). A warm-up request alone (batch 1), then a batch of 16
    on a CPU-like target where 2 drafts pay about 1.35x and K does not. The batch-16
    bucket's first K step costs ~30 ms; taken at face value it keeps drafting off
    for good (the main job's batch-16 run on 2026-12-07: k = 0 after the first
    probe, never re-probed). Each k's first sample in a bucket is provisional and
    measured again soon, so the bucket settles on the drafting that pays."""

    def fresh_engine() -> Engine:
        seen: set[tuple[str, int, int]] = set()

        def first_use(kind: str, b: int, n: int) -> float:
            cold = (kind, b, n) not in seen
            seen.add((kind, b, n))
            return 15e-3 if cold else 0.0

        def verify(b: int, n: int) -> float:
            return 1e-3 * (4 + 0.045 * b * n) + first_use("verify", b, n)

        def draft(b: int, k: int) -> float:
            return 0.0 if k == 0 else 1e-3 * (1.8 + 0.01 * b * k) + first_use("draft", b, k)

        return Engine(verify, draft, lambda step: [0.85, 0.6, 0.4] + [0.2] * (K - 3), noise=0.05)

    for seed in range(3):
        engine, ctrl = fresh_engine(), controller()
        trace = simulate(ctrl, engine, batch=lambda step: 1 if step < 30 else 16, steps=330, seed=seed)
        tail = trace.ks[130:]
        assert sum(1 <= k <= 3 for k in tail) / len(tail) > 0.9, (seed, trace.ks[30:130])
        assert 1 <= ctrl.buckets[(16).bit_length()].decision <= 3


def test_a_borrowed_cost_curve_is_checked_soon() -> None:
    """A warm-up request alone (batch 1: drafting nearly free) explores both ends; then
    a batch of 16 on a compute-bound target, where drafting loses. The batch-16 bucket
    starts from the batch-1 curve with its drafting cost grown to batch 16 (so not at
    the batch-1 choice K), measures its own ends within a few steps instead of drafting
    for the rest of the run (the main job's first version), and does not walk through
    the ks in between while an end is still borrowed."""

    def verify(b: int, n: int) -> float:
        return 1e-2 if b == 1 else compute_bound(b, n)

    engine = Engine(verify, drafter, lambda step: [0.7] * K, noise=0.05)
    for seed in range(3):
        ctrl = controller()
        trace = simulate(ctrl, engine, batch=lambda step: 1 if step < 20 else 16, steps=120, seed=seed)
        assert ctrl.buckets[1].has_ends(K) and ctrl.buckets[(16).bit_length()].has_ends(K)
        assert trace.ks[:20].count(K) >= 10  # batch 1: drafting K pays
        assert max(trace.ks[20:24]) < K, (seed, trace.ks)
        assert trace.ks[40:].count(0) / 80 > 0.95, (seed, trace.ks)


def test_a_draining_batch_does_not_probe_the_buckets_it_passes() -> None:
    """Batches of 16 that drain one request per step (an offline batch whose requests
    finish at different steps), on a compute-bound target where drafting loses at every
    batch size. The buckets of the drain (15 down to 1) borrow the batch-16 curve: a
    smaller batch's drafting costs at most that, so they start at k = 0 and do not
    spend K steps measuring an end in the few steps the drain spends in them (the main
    job's batch-16 run lost about 7 % to those probes)."""

    def batch(step: int) -> int:
        phase = step % 40
        return 16 if phase < 24 else 40 - phase

    engine = Engine(compute_bound, drafter, lambda step: [0.7] * K, noise=0.05)
    for seed in range(3):
        ctrl = controller()
        trace = simulate(ctrl, engine, batch=batch, steps=120, seed=seed)
        drain = [k for step, k in enumerate(trace.ks) if batch(step) < 16]
        assert K not in drain, (seed, trace.ks)
        assert drain.count(0) / len(drain) > 0.9, (seed, drain)


def test_each_bucket_resumes_its_own_k_when_the_batch_size_returns() -> None:
    """Batches of 1 and 16 in turns (an offline job's batches, then single requests):
    once both buckets have decided, each phase starts at its own bucket's k, with no
    steps spent carrying the other bucket's k over (each switch cost a K step at
    batch 16 on the main job)."""

    def verify(b: int, n: int) -> float:
        return 1e-2 if b == 1 else compute_bound(b, n)

    engine = Engine(verify, drafter, lambda step: [0.7] * K, noise=0.05)
    for seed in range(3):
        ctrl = controller()
        trace = simulate(ctrl, engine, batch=lambda step: 1 if (step // 40) % 2 == 0 else 16, steps=400, seed=seed)
        for phase in range(2, 10):
            ks = trace.ks[40 * phase : 40 * phase + 40]
            expected = K if phase % 2 == 0 else 0
            assert ks[:5] == [expected] * 5, (seed, phase, ks)
            assert ks.count(expected) >= 36, (seed, phase, ks)


def test_probes_recover_acceptance_after_a_k0_stretch() -> None:
    """A drafter that is useless for 1500 steps and then excellent: k goes to 0, the
    probes back off while drafting stays useless, and one of them finds the change."""
    change = 1500
    engine = Engine(memory_bound, drafter, lambda step: [0.02] * K if step < change else [0.95] * K, noise=0.05)
    ctrl = controller()
    trace = simulate(ctrl, engine, batch=4, steps=change + 700)
    before = trace.ks[200:change]
    assert before.count(0) / len(before) > 0.97
    probe_steps = [i for i in range(200, change) if trace.ks[i] == K]
    assert 0 < len(probe_steps) <= 6 * ctrl.settings.run_steps  # probes happen, ever more rarely
    assert ctrl.buckets[(4).bit_length()].probe_interval > ctrl.settings.probe_min_interval or ctrl.decision > 0
    recovered = next(i for i in range(change, len(trace.ks)) if trace.ks[i : i + 20] == [K] * 20)
    assert recovered - change <= ctrl.settings.probe_max_interval + 20
    assert ctrl.decision == K


def test_each_batch_bucket_measures_its_own_costs() -> None:
    """Small batches draft (memory-bound target), large ones do not (the target turns
    compute-bound); the batch size drifts like an offline run draining."""

    def verify(b: int, n: int) -> float:
        return 1e-3 * max(10.0, 0.25 * b * n)

    engine = Engine(verify, drafter, lambda step: [0.7] * K, noise=0.05)
    ctrl = controller()
    trace = simulate(ctrl, engine, batch=lambda step: 64 if step < 1500 else 2, steps=3000)
    at_64, at_2 = trace.ks[300:1500], trace.ks[1800:]
    assert at_64.count(0) / len(at_64) > 0.95
    assert sum(at_2) / len(at_2) > K / 2
    assert set(ctrl.buckets) == {(64).bit_length(), (2).bit_length()}
    # The small-batch bucket started from the large one's cost curve, then measured its own.
    assert ctrl.buckets[(2).bit_length()].has_ends(K)


def test_first_steps_explore_both_ends() -> None:
    ctrl = controller()
    picks = []
    pending = None
    for _ in range(8):
        k = ctrl.choose(4)
        ctrl.end_step(4, pending, k, 0.01 * (1 + k))
        picks.append(k)
        pending = k
    assert picks[:3] == [K] * 3 and picks[3:6] == [0] * 3
    assert set(ctrl.buckets[3].seconds) == {0, K}


def scheduled(tokens: dict[str, int], spec: dict[str, int], k: int) -> SimpleNamespace:
    """The fields of vLLM's ``SchedulerOutput`` the engine side reads."""
    return SimpleNamespace(
        num_scheduled_tokens=tokens,
        total_num_scheduled_tokens=sum(tokens.values()),
        scheduled_spec_decode_tokens={r: [-1] * n for r, n in spec.items()},
        num_spec_tokens_to_schedule=k,
    )


def test_only_uniform_decode_steps_are_cost_samples() -> None:
    assert verified_k(scheduled({"a": 4, "b": 4}, {"a": 3, "b": 3}, 3)) == 3
    assert verified_k(scheduled({"a": 1, "b": 1}, {}, 0)) == 0
    assert verified_k(scheduled({"a": 4, "b": 30}, {"a": 3}, 3)) is None  # b is a prefill chunk
    assert verified_k(scheduled({"a": 4, "b": 2}, {"a": 3, "b": 1}, 3)) is None  # mixed draft counts


def test_idle_time_is_not_a_step() -> None:
    runtime = AdaptiveKRuntime(num_speculative_tokens=2)
    seen = []
    runtime.controller.end_step = lambda b, kv, kd, seconds: seen.append(seconds)
    step = scheduled({"a": 3}, {"a": 2}, 2)
    runtime.on_step_end(step, still_busy=False)  # the engine then waits for requests
    runtime.on_step_end(step, still_busy=True)
    runtime.on_step_end(step, still_busy=True)
    assert seen[0] is None and seen[1] is None and seen[2] > 0
    assert AdaptiveKLookup(runtime)[1] in range(3)
