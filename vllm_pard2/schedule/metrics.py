"""Front-end Prometheus metrics of adaptive k, next to vLLM's ``vllm:spec_decode_*``.

The engine core writes the k of each step into ``SchedulerStats`` (a field
added in ``vllm_pard2.patches``); vLLM ships those stats to the front end with
every step's outputs, where ``PrometheusStatLogger.record`` hands them here.
"""

from __future__ import annotations

from typing import Any

from vllm_pard2.schedule.engine import STATS_FIELD


class AdaptiveKProm:
    """``vllm:pard2_num_speculative_tokens`` (gauge: k of the latest step) and
    ``vllm:pard2_step_num_speculative_tokens`` (histogram: k of every step)."""

    def __init__(self, stat_logger: Any) -> None:
        from vllm.v1.metrics.utils import create_metric_per_engine

        spec = stat_logger.vllm_config.speculative_config
        labelnames = ["model_name", "engine"]
        per_engine = stat_logger.per_engine_labelvalues
        gauge = stat_logger._gauge_cls(
            name="vllm:pard2_num_speculative_tokens",
            documentation="pard2 adaptive k: drafts per request chosen for the latest step.",
            multiprocess_mode="mostrecent",
            labelnames=labelnames,
        )
        histogram = stat_logger._histogram_cls(
            name="vllm:pard2_step_num_speculative_tokens",
            documentation="pard2 adaptive k: drafts per request chosen, one observation per step.",
            buckets=[k + 0.5 for k in range(spec.num_speculative_tokens)],
            labelnames=labelnames,
        )
        self.gauge = create_metric_per_engine(gauge, per_engine)
        self.histogram = create_metric_per_engine(histogram, per_engine)

    def observe(self, scheduler_stats: Any, engine_idx: int) -> None:
        k = getattr(scheduler_stats, STATS_FIELD, None)
        if k is None:
            return
        self.gauge[engine_idx].set(k)
        self.histogram[engine_idx].observe(k)
