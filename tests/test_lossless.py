"""pard2 is lossless: greedy outputs equal no speculation, token for token.

Covered: 18 prompts of 3-240 tokens, batch size 1 and the whole batch at once,
k in {1, 4, 8}, drafts of all three supported architectures (Qwen3, Llama,
Qwen2), chunked prefill forced to 32-token chunks, prefix caching on (the
batched pass re-reads every prompt from the prefix cache), max_model_len
reached mid-draft, an aborted request, and preemption under a KV cache too
small for the batch.
"""

from __future__ import annotations

import pytest

from conftest import MAX_MODEL_LEN
from engines import BATCHED_MAX_TOKENS, PROMPT_LENGTHS, EngineRun, run_engine

# (k, draft): one engine each. draft_copy = target weights + pard_token;
# draft_noisy = perturbed target (partial acceptance); the rest are small
# random drafts of each architecture (mostly rejections).
PARD2_CONFIGS = [
    (1, "draft_llama"),
    (4, "draft_copy"),
    (8, "draft_noisy"),
    (4, "draft_qwen2"),
    (8, "draft_qwen3"),
    (4, "draft_td"),  # PARD-2 target-dependent mode (auto picks it)
]
CHUNK = 32  # max_num_batched_tokens: far below the longest prompts
SCENARIOS = ("bs1", "batched", "aborted")


_runs: dict[tuple, EngineRun] = {}


def get_run(tiny_pair, prompts, k: int, draft: str, spec_extra: dict | None = None, **overrides) -> EngineRun:
    """Start (once per session) a pard2 engine with small prefill chunks and
    prefix caching, run every scenario on it, and return the results."""
    key = (k, draft, repr(spec_extra), tuple(sorted(overrides.items())))
    if key not in _runs:
        spec = {"method": "pard2", "model": str(tiny_pair[draft]), "num_speculative_tokens": k, **(spec_extra or {})}
        if "num_speculative_tokens_per_batch_size" not in spec:
            spec.setdefault("pard2_adaptive_k", False)  # fixed k unless a test asks otherwise
        settings = dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=CHUNK)
        settings.update(overrides)
        _runs[key] = run_engine(tiny_pair["target"], prompts, spec, **settings)
    return _runs[key]


@pytest.fixture(scope="module", params=PARD2_CONFIGS, ids=lambda c: f"k{c[0]}-{c[1]}")
def pard2_run(request, tiny_pair, prompts) -> tuple[tuple[int, str], EngineRun]:
    k, draft = request.param
    return request.param, get_run(tiny_pair, prompts, k, draft)


def _first_difference(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference at output token {i}: {x} vs {y}"
    return f"lengths {len(a)} vs {len(b)}"


def assert_same_outputs(got: list[list[int]], want: list[list[int]], label: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w), f"{label}, prompt {i} ({PROMPT_LENGTHS[i]} tokens): {_first_difference(g, w)}"


def test_baseline_is_batch_invariant(baseline):
    """Sanity of the comparison itself: float32 + sharpened heads give the same
    greedy tokens alone and batched, so any pard2 mismatch is pard2's."""
    assert_same_outputs(baseline.outputs["batched"], baseline.outputs["bs1"], "no-spec batched vs bs1")


def test_max_model_len_reached_mid_draft(baseline):
    last = len(PROMPT_LENGTHS) - 1
    total = PROMPT_LENGTHS[last] + len(baseline.outputs["bs1"][last])
    assert total == MAX_MODEL_LEN, "the last prompt must run into max_model_len"
    assert BATCHED_MAX_TOKENS[last] + PROMPT_LENGTHS[last] > MAX_MODEL_LEN


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_greedy_identical_to_no_speculation(pard2_run, baseline, scenario):
    (k, draft), run = pard2_run
    want = baseline.outputs["bs1"] if scenario != "aborted" else baseline.outputs["aborted"]
    assert_same_outputs(run.outputs[scenario], want, f"pard2 k={k} {draft} {scenario}")


def test_abort_leaves_others_identical(pard2_run, baseline):
    _, run = pard2_run
    aborted = run.outputs["aborted"]
    assert aborted[3] == [], "the aborted request must not finish"
    finished = [o for i, o in enumerate(aborted) if i != 3]
    assert all(len(o) > 0 for o in finished)
    assert_same_outputs(aborted[:3] + aborted[4:], baseline.outputs["bs1"][:3] + baseline.outputs["bs1"][4:8], "abort")


def test_pard2_mode_resolved(pard2_run):
    """auto picks target-dependent for the PARD-2 checkpoint (its projection
    fits the target) and target-independent for plain PARD drafts."""
    (_, draft), run = pard2_run
    assert run.mode == ("target_dependent" if draft == "draft_td" else "target_independent")


def test_drafts_were_made_and_verified(pard2_run):
    (k, _), run = pard2_run
    drafts = run.counters["vllm:spec_decode_num_drafts"]
    assert drafts > 0
    # k drafts per step, fewer only where max_model_len cuts the draft window.
    assert (k - 1) * drafts < run.counters["vllm:spec_decode_num_draft_tokens"] <= k * drafts
    assert len(run.per_pos) == k


def test_num_drafts_counts_steps(pard2_run):
    """One request alone: every verification step is one draft, and each step
    emits its accepted drafts plus one bonus token after the prefill's token."""
    (k, _), run = pard2_run
    s = run.single
    emitted = 1 + s["vllm:spec_decode_num_drafts"] + s["vllm:spec_decode_num_accepted_tokens"]
    # The last step may accept past max_tokens; the output is cut there.
    assert s["num_output_tokens"] <= emitted <= s["num_output_tokens"] + k
    assert s["vllm:spec_decode_num_drafts"] < s["num_output_tokens"]


def test_draft_equal_to_target_accepts_first_position(tiny_pair, prompts):
    """draft = target weights + mask token: draft position 1 is the target's own
    greedy choice, so it is accepted (nearly) always."""
    run = get_run(tiny_pair, prompts, 4, "draft_copy")
    drafts = run.counters["vllm:spec_decode_num_drafts"]
    assert run.per_pos[0] >= 0.95 * drafts
    assert run.counters["vllm:spec_decode_num_accepted_tokens"] > drafts


@pytest.mark.parametrize("draft", ["draft_noisy", "draft_td"])
def test_preemption_and_resumption(tiny_pair, prompts, baseline, draft):
    """A KV cache of 384 tokens for 18 requests of up to 256: the scheduler must
    preempt and resume requests, with drafts in flight (for TD mode, resumed
    requests restart their carried target features)."""
    run = get_run(tiny_pair, prompts, 4, draft, kv_cache_memory_bytes=384 * 4096)
    assert run.counters.get("vllm:num_preemptions", 0) > 0, "the test did not force preemption"
    assert_same_outputs(run.outputs["batched"], baseline.outputs["bs1"], "pard2 under preemption")


# Batch-aware k through vLLM's own option: k = 4 alone, 2 for up to 6
# requests, no drafts (plain decoding) above. The batched scenarios start at 18
# and 8 requests and shrink as requests finish, so requests cross k = 0 -> 2 -> 4
# mid-generation.
K_SCHEDULE = [[1, 1, 4], [2, 6, 2], [7, 256, 0]]


def test_batch_size_schedule_is_lossless(tiny_pair, prompts, baseline):
    run = get_run(tiny_pair, prompts, 4, "draft_td", spec_extra={"num_speculative_tokens_per_batch_size": K_SCHEDULE})
    for scenario in SCENARIOS:
        want = baseline.outputs["bs1"] if scenario != "aborted" else baseline.outputs["aborted"]
        assert_same_outputs(run.outputs[scenario], want, f"pard2 k schedule {scenario}")
    # Alone, every step drafts k = 4; over the whole run, the batched steps
    # drafted 2 or nothing, so the mean is strictly between 2 and 4.
    single = run.single
    assert single["vllm:spec_decode_num_draft_tokens"] == 4 * single["vllm:spec_decode_num_drafts"] > 0
    per_step = run.counters["vllm:spec_decode_num_draft_tokens"] / run.counters["vllm:spec_decode_num_drafts"]
    assert 2 < per_step < 4


@pytest.mark.parametrize("k, draft", [(8, "draft_noisy"), (4, "draft_td")])
def test_adaptive_k_is_lossless(tiny_pair, prompts, baseline, k, draft):
    """pard2's default: the engine picks k in 0..K every step (exploration
    at K and 0 first, then its own choice) while requests prefill in chunks,
    hit the prefix cache and get aborted; lazy catch-up covers every k = 0
    stretch. Outputs stay token-identical in TI and TD mode."""
    run = get_run(tiny_pair, prompts, k, draft, spec_extra={"pard2_adaptive_k": True})
    for scenario in SCENARIOS:
        want = baseline.outputs["bs1"] if scenario != "aborted" else baseline.outputs["aborted"]
        assert_same_outputs(run.outputs[scenario], want, f"pard2 adaptive k={k} {draft} {scenario}")
    assert run.counters["vllm:spec_decode_num_drafts"] > 0
