"""In-process measurement: one vLLM engine per method, fixed concurrency.

The engine is stepped by hand so that exactly ``batch_size`` conversations are
in flight at any time (a finished one is replaced at once, as a server with
that many clients would see), and every output chunk is timestamped. Each
method's engine starts once, runs every benchmark and batch size, and is shut
down before the next method's engine starts.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.datasets import Conversation, PromptRenderer
from benchmarks.measure import RequestRecord, RunMeasurement, SpecCounters

# Method name -> how it is described in the output.
METHODS = {
    "none": "no speculation",
    "pard2": "PARD-2 plugin (method=pard2), default settings: adaptive k in 0..K",
    "pard2_static": "PARD-2 plugin, the same k every step (adaptive k off; k = 0: no drafter pass)",
    "pard": "in-tree PARD (draft_model + parallel_drafting)",
    "ar": "in-tree draft model, autoregressive drafting",
    "eagle3": "in-tree EAGLE-3",
}
WARMUP_MAX_TOKENS = 8


@dataclass(frozen=True)
class MethodSpec:
    """One method to measure: its name and its drafts per step (None: none, or unknown for a server)."""

    name: str
    k: int | None

    @property
    def label(self) -> str:
        if self.k is None:
            return self.name
        if self.name == "pard2":
            return f"pard2 adaptive k<={self.k}"
        if self.name == "pard2_static":
            return f"pard2 static k={self.k}"
        return f"{self.name} k={self.k}"


def speculative_config(
    method: MethodSpec, draft: str | None, eagle3_draft: str | None, pard2_mode: str | None, k_max: int = 8
) -> dict[str, Any] | None:
    """vLLM ``speculative_config`` for a method (None: no speculation). ``pard2_static``
    at k = 0 keeps ``num_speculative_tokens = k_max`` (the same engine as the other
    pard2 runs) under a schedule that asks for 0 drafts at every batch size."""
    if method.name == "none":
        return None
    if method.name == "eagle3":
        return {"method": "eagle3", "model": eagle3_draft, "num_speculative_tokens": method.k}
    config: dict[str, Any] = {"model": draft, "num_speculative_tokens": method.k}
    if method.name in ("pard2", "pard2_static"):
        config["method"] = "pard2"
        if pard2_mode is not None:
            config["pard2_mode"] = pard2_mode
        if method.name == "pard2_static" and method.k == 0:
            config |= {"num_speculative_tokens": k_max, "num_speculative_tokens_per_batch_size": [[1, 1, 0]]}
        elif method.name == "pard2_static":
            config["pard2_adaptive_k"] = False
    else:
        config["method"] = "draft_model"
        config["parallel_drafting"] = method.name == "pard"
    return config


def read_spec_counters(llm: Any) -> SpecCounters:
    """Spec-decode counters summed over engines (zeros when the engine does not speculate)."""
    counters = SpecCounters()
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            counters.drafts += metric.value
        elif metric.name == "vllm:spec_decode_num_draft_tokens":
            counters.draft_tokens += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens":
            counters.accepted += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            values = list(metric.values)
            if len(counters.accepted_per_pos) < len(values):
                counters.accepted_per_pos += [0.0] * (len(values) - len(counters.accepted_per_pos))
            for i, v in enumerate(values):
                counters.accepted_per_pos[i] += v
    return counters


def start_engine(target: str, spec: dict[str, Any] | None, engine_kwargs: dict[str, Any]) -> Any:
    from vllm import LLM

    # disable_log_stats=False keeps the counters tau comes from.
    return LLM(model=target, speculative_config=spec, disable_log_stats=False, **engine_kwargs)


def shutdown_engine(llm: Any) -> None:
    """Stop the engine's processes now: the next method's engine needs the memory."""
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class _Active:
    conversation: Conversation
    answers: list[str]
    record: RequestRecord
    token_ids: list[int]


class EngineDriver:
    """Runs conversations through one engine with a fixed number in flight."""

    def __init__(
        self, llm: Any, renderer: PromptRenderer, max_tokens: int, temperature: float, ignore_eos: bool, seed: int
    ) -> None:
        self.llm = llm
        self.renderer = renderer
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.ignore_eos = ignore_eos
        self.seed = seed
        self.max_model_len = llm.llm_engine.model_config.max_model_len
        self._next_id = 0

    def _params(self, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._next_id += 1
        return SamplingParams(
            temperature=self.temperature,
            max_tokens=max_tokens,
            ignore_eos=self.ignore_eos,
            # Per-request seeds: sampled runs are repeatable, and differ per request.
            seed=self.seed + self._next_id if self.temperature > 0 else None,
            output_kind=RequestOutputKind.DELTA,
        )

    def warm_up(self, conversation: Conversation) -> None:
        """One short untimed request: first-call costs stay out of the numbers."""
        self.run([Conversation("warmup", conversation.turns[:1])], 1, max_tokens=WARMUP_MAX_TOKENS)

    def run(
        self,
        conversations: list[Conversation],
        batch_size: int,
        on_turn_done: Callable[[], None] | None = None,
        max_tokens: int | None = None,
    ) -> RunMeasurement:
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        max_tokens = max_tokens or self.max_tokens
        pending = deque(conversations)
        active: dict[str, _Active] = {}
        records: list[RequestRecord] = []
        skipped = 0

        def submit(conversation: Conversation, answers: list[str]) -> None:
            """Queue the conversation's next turn; skip it (and the rest) if the prompt cannot fit."""
            nonlocal skipped
            ids = self.renderer.token_ids(conversation.turns, answers)
            room = self.max_model_len - len(ids)
            if room < 1:
                skipped += len(conversation.turns) - len(answers)
                for _ in range(len(conversation.turns) - len(answers)):
                    if on_turn_done is not None:
                        on_turn_done()
                return
            params = self._params(min(max_tokens, room))
            # Outputs carry the id given here (the engine's internal id has a random suffix).
            request_id = f"bench-{self._next_id}"
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=ids), params)
            active[request_id] = _Active(conversation, answers, RequestRecord(len(ids), time.perf_counter()), [])

        before = read_spec_counters(self.llm)
        start = time.perf_counter()
        while pending or active:
            while pending and len(active) < batch_size:
                submit(pending.popleft(), [])
            if not active:
                continue
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"engine finished while {len(active)} benchmark requests were unanswered")
            outputs = engine.step()
            now = time.perf_counter()
            for out in outputs:
                state = active.get(out.request_id)
                if state is None:
                    continue
                new_ids = list(out.outputs[0].token_ids) if out.outputs else []
                if new_ids:
                    state.token_ids += new_ids
                    state.record.chunk_times.append(now)
                if not out.finished:
                    continue
                del active[out.request_id]
                state.record.output_tokens = len(state.token_ids)
                state.record.end = now
                records.append(state.record)
                if on_turn_done is not None:
                    on_turn_done()
                answers = [*state.answers, self.renderer.tokenizer.decode(state.token_ids, skip_special_tokens=True)]
                if len(answers) < len(state.conversation.turns):
                    submit(state.conversation, answers)  # keeps its slot: the user asks the next turn
        duration = time.perf_counter() - start
        spec = read_spec_counters(self.llm) - before
        return RunMeasurement(records, duration, spec, skipped)
