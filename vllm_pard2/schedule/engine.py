"""Engine-core side of adaptive k: the scheduler's k lookup, step timing, metric, log.

vLLM's V1 scheduler decides k once per step by reading
``Scheduler.dynamic_sd_lookup[batch_size]`` (a dense list built from
``num_speculative_tokens_per_batch_size``) and sends it to the runner as
``num_spec_tokens_to_schedule``; ``Pard2Proposer.propose`` sizes its pass to it.
Adaptive k keeps that path: the config carries a one-range schedule of K, so
vLLM treats the run as dynamic speculative decoding everywhere (no full-graph
decode padding, PIECEWISE CUDA graphs, off under data parallelism), and the
patched ``Scheduler.__init__`` swaps the dense list for ``AdaptiveKLookup``,
which asks the controller. Everything here runs in the engine-core process on
host data the scheduler already has: no device sync.
"""

from __future__ import annotations

import time
from typing import Any

from vllm.logger import init_logger

from vllm_pard2.schedule.adaptive import AdaptiveK, AdaptiveKSettings

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures only that logger tree

LOG_INTERVAL_S = 5.0
STATS_FIELD = "pard2_num_speculative_tokens"  # SchedulerStats field: the k of the step


def marker_schedule(num_speculative_tokens: int) -> list[tuple[int, int, int]]:
    """The ``num_speculative_tokens_per_batch_size`` an adaptive-k config carries: K at
    every batch size (vLLM carries the last range forward), so vLLM's own behaviour
    is unchanged wherever the controller is not asked."""
    return [(1, 1, num_speculative_tokens)]


class AdaptiveKLookup:
    """Stands in for the scheduler's dense ``dynamic_sd_lookup`` list."""

    def __init__(self, runtime: AdaptiveKRuntime) -> None:
        self.runtime = runtime

    def __getitem__(self, batch_size: int) -> int:
        return self.runtime.controller.choose(batch_size)


class AdaptiveKRuntime:
    """Per-scheduler state: the controller, the step clock and the log throttle."""

    def __init__(self, num_speculative_tokens: int, log_interval_s: float = LOG_INTERVAL_S) -> None:
        self.controller = AdaptiveK(AdaptiveKSettings(k_max=num_speculative_tokens))
        self.log_interval_s = log_interval_s
        self._last_end: float | None = None
        self._last_log = time.monotonic()

    def on_request_verified(self, num_drafts: int, num_accepted: int) -> None:
        self.controller.observe_request(num_drafts, num_accepted)

    def on_step_end(self, scheduler_output: Any, still_busy: bool) -> int | None:
        """Feed one finished step to the controller; return its k (None: empty step).

        The step's cost is the wall time since the previous step ended, counted only
        when the engine went straight on (``still_busy`` then): an idle wait is not
        a step. That interval is a step's cost with and without async scheduling.
        """
        now = time.perf_counter()
        seconds = None if self._last_end is None else now - self._last_end
        self._last_end = now if still_busy else None
        batch_size = len(scheduler_output.num_scheduled_tokens)
        if batch_size == 0:
            return None
        k = scheduler_output.num_spec_tokens_to_schedule
        self.controller.end_step(batch_size, verified_k(scheduler_output), k, seconds)
        if time.monotonic() - self._last_log >= self.log_interval_s:
            self._last_log = time.monotonic()
            self._log(batch_size, k)
        return k

    def _log(self, batch_size: int, k: int) -> None:
        ctrl = self.controller
        tau, speed_up = ctrl.estimate(ctrl.decision)
        logger.info(
            "pard2 adaptive k: B=%d k=%d (decision %d of 0..%d) tau_est=%.2f est speed-up x%.2f "
            "over k=0 (probes %d, switches %d)",
            batch_size,
            k,
            ctrl.decision,
            ctrl.k_max,
            tau,
            speed_up,
            ctrl.probes,
            ctrl.switches,
        )


def verified_k(scheduler_output: Any) -> int | None:
    """Drafts per request this step verified, if it is a pure decode step with the same
    count for every request; else None (prefill work or mixed counts: not a clean
    cost sample)."""
    num_requests = len(scheduler_output.num_scheduled_tokens)
    spec = scheduler_output.scheduled_spec_decode_tokens
    num_spec = sum(map(len, spec.values()))
    if scheduler_output.total_num_scheduled_tokens != num_requests + num_spec:
        return None
    if num_spec == 0:
        return 0
    if len(spec) != num_requests or num_spec % num_requests:
        return None
    k = num_spec // num_requests
    return k if all(len(tokens) == k for tokens in spec.values()) else None


def install(scheduler: Any) -> AdaptiveKRuntime | None:
    """Swap the scheduler's dense k lookup for the controller (pard2 with adaptive k).
    vLLM drops the schedule under data parallelism (ranks must agree on k); then the
    lookup is None and k stays fixed."""
    spec = scheduler.vllm_config.speculative_config
    if scheduler.dynamic_sd_lookup is None:
        logger.info(
            "pard2 adaptive k is off: vLLM disabled per-step k (data parallelism); k = %d.", spec.num_speculative_tokens
        )
        return None
    runtime = AdaptiveKRuntime(spec.num_speculative_tokens)
    scheduler.dynamic_sd_lookup = AdaptiveKLookup(runtime)
    scheduler.pard2_k_runtime = runtime
    logger.info(
        "pard2 adaptive k: on, k in 0..%d chosen per step from measured cost and acceptance.",
        spec.num_speculative_tokens,
    )
    return runtime
