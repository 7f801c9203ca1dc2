"""pard2 with ``"draft_sample_method": "probabilistic"``: drafts sampled from the
drafter's own per-position distribution q, and that q handed to the rejection sampler.

vLLM 0.32 supports this for parallel drafting (``SpecDecodeBaseProposer._sample_from_logits``
repeats each request's temperature over its k draft rows; the runner passes the cached
q rows to ``RejectionSampler``). Three checks:

* distribution: one mixed batch (temperature 1.0, temperature 0.7 with top-p 0.9,
  and greedy requests) matches a no-speculation engine by the same chi-square test
  as tests/test_sampling.py (whole-test false-alarm rate 0.1 %);
* greedy requests in that mixed batch give exactly the no-spec tokens;
* with the target's own weights as draft, q equals the target's p at draft position 1,
  so every first draft must be accepted (min(1, p/q) = 1) for each temperature in a
  mixed-temperature batch: a q that is not the distribution the draft was sampled
  from, or a temperature given to the wrong request, would show as rejections.
"""

from __future__ import annotations

import pytest

from conftest import engine_kwargs, shutdown
from engines import spec_counters
from test_sampling import FALSE_ALARM, NUM_SAMPLES, POSITIONS, SETTINGS, chi_square_p_value, soft_pair  # noqa: F401

GREEDY_PROMPTS = [[17, 401, 93, 250, 611, 12, 77, 808], [5, 6, 7], list(range(100, 160)), [900, 3, 41, 41, 41, 2]]
GREEDY_MAX_TOKENS = 24
PROBABILISTIC = {"draft_sample_method": "probabilistic"}


def mixed_batch(target, spec: dict | None) -> tuple[dict[str, list[list[int]]], list[list[int]]]:
    """Sampled continuations per setting and greedy continuations, all in one batch
    (greedy requests interleaved with the sampled ones)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs())
    try:
        prompt = TokensPrompt(prompt_token_ids=[17, 401, 93, 250, 611, 12, 77, 808])
        names = [name for name in SETTINGS for _ in range(NUM_SAMPLES)]
        requests = [(prompt, SamplingParams(max_tokens=POSITIONS, ignore_eos=True, **SETTINGS[n])) for n in names]
        greedy = SamplingParams(temperature=0.0, max_tokens=GREEDY_MAX_TOKENS, ignore_eos=True)
        stride = len(requests) // len(GREEDY_PROMPTS)
        for i, ids in enumerate(GREEDY_PROMPTS):
            requests.insert(i * (stride + 1), (TokensPrompt(prompt_token_ids=ids), greedy))
        outputs = llm.generate([p for p, _ in requests], [s for _, s in requests], use_tqdm=False)
    finally:
        shutdown(llm)
    by_setting: dict[str, list[list[int]]] = {name: [] for name in SETTINGS}
    greedy_out = []
    sampled = iter(names)
    for (_, params), out in zip(requests, outputs, strict=True):
        ids = list(out.outputs[0].token_ids)
        if params.temperature == 0.0:
            greedy_out.append(ids)
        else:
            by_setting[next(sampled)].append(ids)
    return by_setting, greedy_out


@pytest.fixture(scope="module")
def no_spec_run(soft_pair):  # noqa: F811 - the fixture imported above
    return mixed_batch(soft_pair["target"], None)


@pytest.fixture(scope="module")
def probabilistic_run(soft_pair):  # noqa: F811
    spec = {
        "method": "pard2",
        "model": str(soft_pair["draft"]),
        "num_speculative_tokens": 4,
        "pard2_adaptive_k": False,
        **PROBABILISTIC,
    }
    return mixed_batch(soft_pair["target"], spec)


def test_probabilistic_drafts_keep_the_distribution(no_spec_run, probabilistic_run):
    got, want = probabilistic_run[0], no_spec_run[0]
    pv = {
        f"{name} pos{j}": chi_square_p_value([s[j] for s in got[name]], [s[j] for s in want[name]])
        for name in SETTINGS
        for j in range(POSITIONS)
    }
    threshold = FALSE_ALARM / len(pv)
    print({k: f"{v:.2e}" for k, v in pv.items()})
    assert min(pv.values()) > threshold, f"distribution differs (threshold {threshold:.1e}): {pv}"


def test_greedy_requests_in_a_sampled_batch_match_no_speculation(no_spec_run, probabilistic_run):
    assert len(probabilistic_run[1]) == len(GREEDY_PROMPTS)
    assert probabilistic_run[1] == no_spec_run[1]


def test_draft_equal_to_target_is_always_accepted_first(tiny_pair):
    """draft_copy = the target's weights: at draft position 1, q == p (up to float
    rounding), so acceptance there must be ~100 % at every temperature."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = {
        "method": "pard2",
        "model": str(tiny_pair["draft_copy"]),
        "num_speculative_tokens": 4,
        "pard2_adaptive_k": False,
        **PROBABILISTIC,
    }
    llm = LLM(model=str(tiny_pair["target"]), speculative_config=spec, **engine_kwargs())
    try:
        prompts = [TokensPrompt(prompt_token_ids=[11 + 7 * i, 400 + i, 93, 250 - i]) for i in range(24)]
        temperatures = [1.0, 0.5, 1.3]
        params = [SamplingParams(temperature=temperatures[i % 3], max_tokens=48, ignore_eos=True) for i in range(24)]
        llm.generate(prompts, params, use_tqdm=False)
        counters, per_pos = spec_counters(llm)
    finally:
        shutdown(llm)
    drafts = counters["vllm:spec_decode_num_drafts"]
    assert drafts > 100, counters
    first_rate = per_pos[0] / drafts
    tau = 1 + counters["vllm:spec_decode_num_accepted_tokens"] / drafts
    print(f"draft_copy probabilistic: drafts={drafts:.0f} pos1 acceptance={first_rate:.4f} tau (incl. bonus)={tau:.3f}")
    assert first_rate >= 0.995, (first_rate, per_pos, counters)
