"""What one benchmark run records, and the numbers derived from it.

Both drivers (in-process engine, OpenAI-compatible server) fill the same
records: per request the prompt and output token counts and the arrival time
of every piece of output, plus the spec-decode counters before and after.

Definitions used in every output:
- tau (mean acceptance length) = 1 + accepted draft tokens / drafts. It COUNTS
  the target's bonus token: tokens a request gains per target forward pass.
- acceptance rate at draft position i = drafts whose token i was accepted /
  drafts (vLLM's ``spec_decode_num_accepted_tokens_per_pos`` / ``num_drafts``).
- ITL (inter-token latency) = gap between successive output chunks of one
  request. With speculation a chunk can carry several tokens, so ITL is the
  latency a streaming user sees, not time per token (that is TPOT).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

TAU_DEFINITION = "tau = 1 + accepted / drafts: mean tokens per target step per request, bonus token counted"


@dataclass
class RequestRecord:
    """One request (one conversation turn): sizes and timestamps (perf_counter seconds)."""

    prompt_tokens: int
    start: float
    output_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)
    end: float | None = None

    @property
    def latency(self) -> float:
        assert self.end is not None, "request not finished"
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def chunk_gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.output_tokens < 2 or not self.chunk_times or self.end is None:
            return None
        return (self.end - self.chunk_times[0]) / (self.output_tokens - 1)


@dataclass
class SpecCounters:
    """Cumulative spec-decode counters of an engine or server (all zero without speculation)."""

    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    accepted_per_pos: list[float] = field(default_factory=list)

    def __sub__(self, before: SpecCounters) -> SpecCounters:
        per_pos = [
            now - (before.accepted_per_pos[i] if i < len(before.accepted_per_pos) else 0.0)
            for i, now in enumerate(self.accepted_per_pos)
        ]
        return SpecCounters(
            self.drafts - before.drafts,
            self.draft_tokens - before.draft_tokens,
            self.accepted - before.accepted,
            per_pos,
        )


@dataclass
class RunMeasurement:
    """Everything one (method, benchmark, batch size) run produced."""

    records: list[RequestRecord]
    duration_s: float
    spec: SpecCounters | None  # None: counters unavailable (server without /metrics)
    skipped_turns: int = 0


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _summary_ms(values_s: list[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in values_s]
    return {
        "mean": statistics.fmean(ms) if ms else None,
        "p50": _percentile(ms, 50),
        "p99": _percentile(ms, 99),
    }


def spec_summary(spec: SpecCounters | None) -> dict[str, Any]:
    """tau and per-position acceptance rates; all None without drafts."""
    if spec is None or spec.drafts <= 0:
        return {
            "tau": None,
            "acceptance_rate_per_position": None,
            "num_drafts": spec.drafts if spec else None,
            "num_draft_tokens": spec.draft_tokens if spec else None,
            "num_accepted_tokens": spec.accepted if spec else None,
        }
    return {
        "tau": 1.0 + spec.accepted / spec.drafts,
        "acceptance_rate_per_position": [n / spec.drafts for n in spec.accepted_per_pos],
        "num_drafts": spec.drafts,
        "num_draft_tokens": spec.draft_tokens,
        "num_accepted_tokens": spec.accepted,
    }


def summarize(run: RunMeasurement) -> dict[str, Any]:
    """The JSON fields of one run (speed-up is added later, against the no-spec run)."""
    records = run.records
    output_tokens = sum(r.output_tokens for r in records)
    latencies = [r.latency for r in records]
    ttfts = [t for r in records if (t := r.ttft) is not None]
    gaps = [g for r in records for g in r.chunk_gaps]
    tpots = [t for r in records if (t := r.tpot) is not None]
    return {
        "num_requests": len(records),
        "skipped_turns": run.skipped_turns,
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "output_tokens": output_tokens,
        "duration_s": run.duration_s,
        "output_tokens_per_s": output_tokens / run.duration_s if run.duration_s > 0 else None,
        "request_latency_s": {k: (v / 1000 if v is not None else None) for k, v in _summary_ms(latencies).items()},
        "ttft_ms": _summary_ms(ttfts),
        "itl_ms": _summary_ms(gaps),
        "tpot_ms": _summary_ms(tpots),
        **spec_summary(run.spec),
    }
