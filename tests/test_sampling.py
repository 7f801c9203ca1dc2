"""Speculative sampling with pard2 keeps the target's distribution on CPU.

Many samples of one prompt, with pard2 and without speculation, in one mixed
batch (half at temperature 1.0, half at 0.7 with top-p 0.9). For each of the
first generated positions a two-sample chi-square test compares the token
histograms. Each comparison uses significance 1e-3 / (number of comparisons),
so the whole test has a false-alarm rate of at most 0.1 %. The same test run
with vLLM's CPU expand kernel left as is (``VLLM_PARD2_CPU_EXPAND_FIX=0``)
must fail, which shows the test can see the deviation it guards against.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import engine_kwargs, shutdown

NUM_SAMPLES = 1200  # per sampling setting
POSITIONS = 4
SETTINGS = {"t1.0": dict(temperature=1.0), "t0.7-p0.9": dict(temperature=0.7, top_p=0.9)}
FALSE_ALARM = 1e-3
MIN_BIN = 10  # pool tokens rarer than this (combined count) into one bin


@pytest.fixture(scope="module")
def soft_pair(tmp_path_factory, tiny_pair):
    """A target with a soft output distribution and a perturbed copy as draft."""
    from transformers import AutoTokenizer

    from vllm_pard2.tiny_pair import TARGET_SHAPE, perturbed_copy, random_model, save_model

    root = tmp_path_factory.mktemp("soft_pair")
    tok = AutoTokenizer.from_pretrained(tiny_pair["target"])
    target = random_model(TARGET_SHAPE, 1024, tok.eos_token_id, tok.pad_token_id, seed=3, head_logit_std=2.5)
    pard = {"pard_token": tok.convert_tokens_to_ids("<|mask|>")}
    return {
        "target": save_model(target, tok, root / "target"),
        "draft": save_model(perturbed_copy(target, 0.1, seed=4), tok, root / "draft", pard),
    }


def sample(target, spec: dict | None) -> dict[str, list[list[int]]]:
    """NUM_SAMPLES continuations per setting, all settings in one batch."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs())
    try:
        prompt = TokensPrompt(prompt_token_ids=[17, 401, 93, 250, 611, 12, 77, 808])
        names = [name for name in SETTINGS for _ in range(NUM_SAMPLES)]
        params = [SamplingParams(max_tokens=POSITIONS, ignore_eos=True, **SETTINGS[n]) for n in names]
        outputs = llm.generate([prompt] * len(names), params, use_tqdm=False)
    finally:
        shutdown(llm)
    by_setting: dict[str, list[list[int]]] = {name: [] for name in SETTINGS}
    for name, out in zip(names, outputs, strict=True):
        by_setting[name].append(list(out.outputs[0].token_ids))
    return by_setting


def chi_square_p_value(a: list[int], b: list[int]) -> float:
    """Two-sample chi-square test of equal distributions (rare tokens pooled)."""
    ca, cb = Counter(a), Counter(b)
    common = [t for t in set(ca) | set(cb) if ca[t] + cb[t] >= MIN_BIN]
    rows = [(ca[t], cb[t]) for t in common]
    rest = (len(a) - sum(r[0] for r in rows), len(b) - sum(r[1] for r in rows))
    if sum(rest) > 0:
        rows.append(rest)
    if len(rows) < 2:
        return 1.0
    counts = torch.tensor(rows, dtype=torch.float64)
    expected = counts.sum(1, keepdim=True) * counts.sum(0, keepdim=True) / counts.sum()
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor(float(len(rows) - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, stat / 2))


def p_values(got, want) -> dict[str, float]:
    return {
        f"{name} pos{j}": chi_square_p_value([s[j] for s in got[name]], [s[j] for s in want[name]])
        for name in SETTINGS
        for j in range(POSITIONS)
    }


@pytest.fixture(scope="module")
def no_spec_samples(soft_pair):
    return sample(soft_pair["target"], None)


def pard2_spec(soft_pair) -> dict:
    return {"method": "pard2", "model": str(soft_pair["draft"]), "num_speculative_tokens": 4, "pard2_adaptive_k": False}


def test_sampling_matches_no_speculation(soft_pair, no_spec_samples):
    got = sample(soft_pair["target"], pard2_spec(soft_pair))
    pv = p_values(got, no_spec_samples)
    threshold = FALSE_ALARM / len(pv)
    print({k: f"{v:.2e}" for k, v in pv.items()})
    assert min(pv.values()) > threshold, f"distribution differs (threshold {threshold:.1e}): {pv}"


def test_detects_vllm_cpu_expand_bug(soft_pair, no_spec_samples, monkeypatch):
    """Without the fix the engine's expanded temperatures are garbage, and the
    later positions (the ones drafts touch) must fail the same test."""
    monkeypatch.setenv("VLLM_PARD2_CPU_EXPAND_FIX", "0")
    got = sample(soft_pair["target"], pard2_spec(soft_pair))
    pv = p_values(got, no_spec_samples)
    threshold = FALSE_ALARM / len(pv)
    print({k: f"{v:.2e}" for k, v in pv.items()})
    assert min(pv.values()) < threshold, f"the broken sampler went unnoticed: {pv}"
