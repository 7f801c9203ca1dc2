"""Adaptive k in a running engine (tiny pair on CPU).

The draft here is a small random model: its drafts are almost never accepted,
so at batch 16 drafting cannot pay and the controller must turn it off, while
the output stays token-identical to no speculation.
"""

from __future__ import annotations

import pytest

from conftest import engine_kwargs, shutdown

BATCH = 16
MAX_TOKENS = 96
K = 4
DRAFT = "draft_qwen3"  # a small random model: drafts almost never accepted


def generate(target, prompts, spec):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs())
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        metrics = {m.name: m for m in llm.get_metrics()}
        adaptive = llm.llm_engine.vllm_config.speculative_config
        return [o.outputs[0].token_ids for o in outputs], metrics, adaptive
    finally:
        shutdown(llm)


@pytest.fixture(scope="module")
def batch_prompts(prompts):
    return (prompts * 2)[:BATCH]


@pytest.fixture(scope="module")
def plain(tiny_pair, batch_prompts):
    return generate(tiny_pair["target"], batch_prompts, spec=None)[0]


@pytest.fixture(scope="module")
def adaptive(tiny_pair, batch_prompts):
    spec = {"method": "pard2", "model": str(tiny_pair[DRAFT]), "num_speculative_tokens": K}
    return generate(tiny_pair["target"], batch_prompts, spec)


def test_adaptive_k_is_lossless_and_turns_useless_drafting_off(plain, adaptive):
    outputs, metrics, spec = adaptive
    assert spec.pard2_adaptive_k is True
    assert outputs == plain
    gauge = metrics["vllm:pard2_num_speculative_tokens"]
    histogram = metrics["vllm:pard2_step_num_speculative_tokens"]
    steps = histogram.count
    assert steps >= MAX_TOKENS // 2, steps  # one observation per engine step
    k0_steps = histogram.buckets["0.5"]
    # Exploration (K, then 0) and rare one-step probes aside, every step drafts nothing.
    assert k0_steps >= 0.8 * steps, histogram.buckets
    assert k0_steps < steps, "k = K was explored first"
    assert gauge.value == 0
    drafts = metrics["vllm:spec_decode_num_drafts"].value
    assert 0 < drafts <= 0.2 * steps * BATCH
