"""Run a fixed set of greedy generation scenarios on one engine and keep the results.

Engines are expensive on CPU, so each configuration is started once, runs
every scenario, records token ids and spec-decode counters, and shuts down.
Tests then compare recorded results, never live engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conftest import engine_kwargs, shutdown

# Prompt lengths in tokens: short to long, all well past a 32-token prefill
# chunk at the top end; the last one runs into max_model_len (256) mid-draft.
PROMPT_LENGTHS = [3, 5, 8, 13, 21, 34, 55, 89, 120, 150, 180, 200, 7, 40, 70, 100, 16, 240]
MAX_TOKENS = 40
BATCHED_MAX_TOKENS = [MAX_TOKENS] * (len(PROMPT_LENGTHS) - 1) + [64]


def make_prompts(tokenizer_dir: Path) -> list[list[int]]:
    """Token-id prompts of PROMPT_LENGTHS cut from stdlib source; every
    second prompt shares a long prefix with its neighbour (prefix-cache hits)."""
    from transformers import AutoTokenizer

    from vllm_pard2.tiny_pair import stdlib_corpus

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok("\n".join(stdlib_corpus(40)))["input_ids"]
    prompts = []
    for i, n in enumerate(PROMPT_LENGTHS):
        start = 0 if i % 2 else 997 * i
        prompts.append(ids[start : start + n])
    return prompts


@dataclass
class EngineRun:
    """Outputs (token ids) of every scenario plus spec-decode counter deltas."""

    outputs: dict[str, list[list[int]]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    per_pos: list[float] = field(default_factory=list)
    single: dict[str, float] = field(default_factory=dict)
    # Counters after the deterministic scenarios (before the abort, whose
    # timing against the engine-core process varies from run to run).
    counters_before_abort: dict[str, float] = field(default_factory=dict)
    per_pos_before_abort: list[float] = field(default_factory=list)
    mode: str | None = None  # resolved pard2_mode


def spec_counters(llm) -> tuple[dict[str, float], list[float]]:
    counters, per_pos = {}, []
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            per_pos = list(metric.values)
        elif metric.name.startswith(("vllm:spec_decode", "vllm:num_preemptions")):
            counters[metric.name] = metric.value
    return counters, per_pos


def run_engine(target: Path, prompts: list[list[int]], spec: dict | None, **overrides) -> EngineRun:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs(**overrides))
    run = EngineRun(mode=getattr(llm.llm_engine.vllm_config.speculative_config, "pard2_mode", None))
    try:
        token_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]

        def params(n: int) -> SamplingParams:
            return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

        # One request alone: counters of a single request (num_drafts counts steps).
        before, _ = spec_counters(llm)
        [single] = llm.generate([token_prompts[9]], params(MAX_TOKENS), use_tqdm=False)
        after, _ = spec_counters(llm)
        run.single = {k: after[k] - before.get(k, 0) for k in after}
        run.single["num_output_tokens"] = len(single.outputs[0].token_ids)

        run.outputs["bs1"] = [
            llm.generate([p], params(n), use_tqdm=False)[0].outputs[0].token_ids
            for p, n in zip(token_prompts, BATCHED_MAX_TOKENS, strict=True)
        ]
        # The whole batch at once: every prompt is now a prefix-cache hit.
        batch = llm.generate(token_prompts, [params(n) for n in BATCHED_MAX_TOKENS], use_tqdm=False)
        run.outputs["batched"] = [o.outputs[0].token_ids for o in batch]
        run.counters_before_abort, run.per_pos_before_abort = spec_counters(llm)
        run.outputs["aborted"] = run_with_abort(llm, token_prompts[:8], abort_index=3)
        run.counters, run.per_pos = spec_counters(llm)
    finally:
        shutdown(llm)
    return run


def run_with_abort(llm, prompts, abort_index: int, steps_before_abort: int = 4) -> list[list[int]]:
    """Step the engine by hand and abort one request mid-generation; return the
    others' outputs (the aborted slot holds an empty list)."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    ids = [f"abort-test-{i}" for i in range(len(prompts))]
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, params)
    finished: dict[str, list[int]] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
        if steps == steps_before_abort:
            assert ids[abort_index] not in finished, "abort came too late to test anything"
            engine.abort_request([ids[abort_index]])
        assert steps < 10_000
    return [finished.get(rid, []) if i != abort_index else [] for i, rid in enumerate(ids)]
