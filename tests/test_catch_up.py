"""Lazy draft catch-up: k = 0 steps run no drafter pass, the next drafting
step feeds the draft every committed token it missed.

- Host bookkeeping and row arithmetic against hand-made cases.
- Engines with vLLM's batch-size schedule [[1, 1, K], [2, 256, 0]]: a request
  runs beside a short one (k = 0, no drafter pass: it falls behind by its
  whole prompt and the first tokens), then alone (k = K, catch-up). Greedy
  output equals no speculation. With draft = target + mask (TI), draft 1 is
  the target's own choice given a complete draft KV, so its acceptance after
  the catch-up shows the KV really is complete. With the embedded trained
  PARD-2 pair (TD), tau after the resume stays within 5% of never skipping.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_pard2.proposer.catch_up import (
    DraftLag,
    catch_up_slots,
    insert_rows,
    merged_slot_mapping,
    plan_catch_up,
)

from conftest import engine_kwargs, shutdown

# --- bookkeeping and layout ---------------------------------------------------


def test_lag_marks_skipped_requests_and_hands_out_catch_up():
    lag = DraftLag()
    lag.skip(["a", "b"], np.array([10, 3]))
    lag.skip(["a", "b"], np.array([11, 4]))  # still behind from the first skip
    assert lag.draft_end == {"a": 10, "b": 3}
    begins, lengths = lag.take(["b", "a", "c"], np.array([6, 14, 7]), budget=100)
    assert begins.tolist() == [3, 10, 7] and lengths.tolist() == [3, 4, 0]
    assert lag.num_behind == 0


def test_lag_budget_leaves_the_rest_behind():
    lag = DraftLag()
    lag.skip(["a", "b"], np.array([0, 0]))
    begins, lengths = lag.take(["a", "b"], np.array([50, 20]), budget=30)
    assert lengths.tolist() == [30, 0]
    assert lag.draft_end == {"a": 30, "b": 0}
    lag.forget({"b": object()})
    assert lag.draft_end == {"b": 0}


def test_no_draft_fetch_after_a_k0_step():
    """Without async scheduling the engine core fetches each step's drafts from the
    worker (an RPC); after a pard2 step at k = 0 there are none to fetch."""
    from types import SimpleNamespace

    from vllm.v1.engine.core import EngineCore

    from vllm_pard2 import patches

    patches.apply_all()
    fetched = []
    executor = SimpleNamespace(take_draft_token_ids=lambda: fetched.append(1))
    scheduler = SimpleNamespace(pard2_last_step_k=0, update_draft_token_ids=lambda drafts: None)
    core = SimpleNamespace(check_for_draft_tokens=True, async_scheduling=False, model_executor=executor,
                           scheduler=scheduler)  # fmt: skip
    EngineCore.post_step(core, model_executed=True)
    assert fetched == []
    scheduler.pard2_last_step_k = 3
    EngineCore.post_step(core, model_executed=True)
    assert fetched == [1]
    core.scheduler = SimpleNamespace(update_draft_token_ids=lambda drafts: None)  # another method
    EngineCore.post_step(core, model_executed=True)
    assert fetched == [1, 1]


def test_drafts_that_came_with_the_output_need_no_fetch():
    """A pard2 step's drafts travel inside its ModelRunnerOutput: the engine core hands
    them to the scheduler itself (no RPC); a step whose output carries none (an
    empty step) still fetches them, and with async scheduling vLLM's path stays."""
    from types import SimpleNamespace

    from vllm.v1.engine.core import EngineCore

    from vllm_pard2 import patches

    patches.apply_all()
    fetched, handed = [], []
    executor = SimpleNamespace(take_draft_token_ids=lambda: fetched.append(1))
    scheduler = SimpleNamespace(pard2_last_step_k=2, update_draft_token_ids=handed.append,
                                pard2_step_drafts=patches.StepDrafts("drafts of step 1"))  # fmt: skip
    core = SimpleNamespace(check_for_draft_tokens=True, async_scheduling=False, batch_queue=None,
                           model_executor=executor, scheduler=scheduler)  # fmt: skip
    EngineCore.post_step(core, model_executed=True)
    assert (fetched, handed, scheduler.pard2_step_drafts) == ([], ["drafts of step 1"], None)
    scheduler.pard2_step_drafts = patches.StepDrafts(None)  # the runner had no drafts
    EngineCore.post_step(core, model_executed=True)
    assert (fetched, handed) == ([], ["drafts of step 1"])
    EngineCore.post_step(core, model_executed=True)  # an output without drafts attached
    assert fetched == [1]
    scheduler.pard2_step_drafts, core.async_scheduling = patches.StepDrafts("unused"), True
    EngineCore.post_step(core, model_executed=True)  # async: vLLM's own path (no fetch there)
    assert (fetched, handed) == ([1], ["drafts of step 1"])


def test_plain_k0_steps_bypass_vllms_draft_preparation():
    """A pard2 step that verifies no drafts and drafts none goes from the runner
    straight to the proposer's k = 0 bookkeeping; steps that verify drafts,
    steps that draft, and other methods keep vLLM's path."""
    from types import SimpleNamespace

    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_pard2 import patches

    patches.apply_all()
    calls = []
    drafter = SimpleNamespace(
        skips_plain_steps=True, skip_plain_step=lambda aux, cad: calls.append((aux, cad)) or "none"
    )
    runner = SimpleNamespace(drafter=drafter, speculative_config=SimpleNamespace(disable_padded_drafter_batch=False),
                             valid_sampled_token_count_event=None)  # fmt: skip
    plain = SimpleNamespace(num_spec_tokens_to_schedule=0, scheduled_spec_decode_tokens={})
    args = ["sampled", "metadata", "hidden", "sample_hidden", "aux", None, "cad", "slots"]
    assert GPUModelRunner.propose_draft_token_ids(runner, plain, *args) == "none"
    assert calls == [("aux", "cad")]
    assert patches._plain_pard2_step(runner, plain)
    verifying = SimpleNamespace(num_spec_tokens_to_schedule=0, scheduled_spec_decode_tokens={"a": [5, 6]})
    drafting = SimpleNamespace(num_spec_tokens_to_schedule=3, scheduled_spec_decode_tokens={})
    assert not patches._plain_pard2_step(runner, verifying)
    assert not patches._plain_pard2_step(runner, drafting)
    runner.drafter = SimpleNamespace()  # another method's drafter
    assert not patches._plain_pard2_step(runner, plain)


def test_plan_inserts_catch_up_rows_before_each_request():
    # Regular layout: request 0 has rows [0, 3), request 1 rows [3, 8).
    qsl = np.array([0, 3, 8], dtype=np.int32)
    tokens = np.arange(200, dtype=np.int32).reshape(2, 100)  # token at (row, pos) = 100*row + pos
    plan = plan_catch_up(qsl, np.array([5, 40]), np.array([2, 3]), tokens, np.array([0, 1]), torch.device("cpu"))
    assert plan.num_rows == 13
    assert plan.query_start_loc_cpu.tolist() == [0, 5, 13]
    assert plan.max_query_len == 8
    assert plan.dest_of_catch_up.tolist() == [0, 1, 5, 6, 7]
    assert plan.dest_of_regular.tolist() == [2, 3, 4, 8, 9, 10, 11, 12]
    assert plan.positions.tolist() == [5, 6, 40, 41, 42]
    assert plan.token_ids.tolist() == [5, 6, 140, 141, 142]
    assert plan.sample_shift.tolist() == [2, 5]

    buffer = torch.arange(20) + 1000
    insert_rows(buffer, plan, plan.token_ids)
    assert buffer[:13].tolist() == [5, 6, 1000, 1001, 1002, 140, 141, 142, 1003, 1004, 1005, 1006, 1007]
    assert buffer[13:].tolist() == list(range(1013, 1020))  # past the batch: untouched

    block_table = torch.tensor([[7, 8, 9, 10], [3, 4, 5, 6]])  # block size 16
    slots = catch_up_slots(plan, block_table, block_size=16, max_model_len=64)
    assert slots.tolist() == [7 * 16 + 5, 7 * 16 + 6, 5 * 16 + 8, 5 * 16 + 9, 5 * 16 + 10]
    regular = torch.arange(8) + 500
    merged = merged_slot_mapping(regular, plan, slots)
    assert merged[plan.dest_of_regular].tolist() == regular.tolist()
    assert merged[plan.dest_of_catch_up].tolist() == slots.tolist()


# --- engines ------------------------------------------------------------------

K = 4
SKIP_WHEN_BATCHED = [[1, 1, K], [2, 256, 0]]
LONG_TOKENS, SHORT_TOKENS = 48, 6


def _counters(llm) -> dict[str, float | list[float]]:
    from engines import spec_counters

    counters, per_pos = spec_counters(llm)
    return {**counters, "per_pos": per_pos}


def _delta(after: dict, before: dict) -> dict:
    out = {k: after[k] - before.get(k, 0) for k in after if k != "per_pos"}
    before_pos = before.get("per_pos") or [0] * len(after["per_pos"])
    out["per_pos"] = [a - b for a, b in zip(after["per_pos"], before_pos, strict=True)]
    return out


def resume_after_skipping(target, draft, long_prompt, short_prompt, mode=None, k=K):
    """On one engine: the long request alone (never skips), then beside the
    short one (skips until the short one finishes, then catches up).
    Returns outputs and counter deltas of both runs."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = {
        "method": "pard2",
        "model": str(draft),
        "num_speculative_tokens": k,
        "num_speculative_tokens_per_batch_size": [[1, 1, k], [2, 256, 0]],
    }
    if mode:
        spec["pard2_mode"] = mode
    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs(enable_prefix_caching=False))
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=LONG_TOKENS, ignore_eos=True)
        short = SamplingParams(temperature=0.0, max_tokens=SHORT_TOKENS, ignore_eos=True)
        long_p, short_p = TokensPrompt(prompt_token_ids=long_prompt), TokensPrompt(prompt_token_ids=short_prompt)
        c0 = _counters(llm)
        alone = llm.generate([long_p], greedy, use_tqdm=False)[0].outputs[0].token_ids
        c1 = _counters(llm)
        resumed = llm.generate([long_p, short_p], [greedy, short], use_tqdm=False)
        c2 = _counters(llm)
    finally:
        shutdown(llm)
    return {
        "alone": list(alone),
        "resumed": list(resumed[0].outputs[0].token_ids),
        "short": list(resumed[1].outputs[0].token_ids),
        "never_skip": _delta(c1, c0),
        "after_resume": _delta(c2, c1),
    }


def tau(counters: dict) -> float:
    return 1 + counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_drafts"]


def test_catch_up_restores_a_complete_draft_kv(tiny_pair, prompts):
    """draft = target + mask: draft 1 is accepted only if the draft's KV holds
    the whole history, including the prompt and tokens of the k = 0 steps."""
    run = resume_after_skipping(tiny_pair["target"], tiny_pair["draft_copy"], prompts[9], prompts[1])
    assert run["resumed"] == run["alone"]
    resumed = run["after_resume"]
    skipped_steps = SHORT_TOKENS - 1  # the short request's decode steps ran at k = 0
    assert resumed["vllm:spec_decode_num_drafts"] <= (LONG_TOKENS - skipped_steps)
    assert resumed["vllm:spec_decode_num_drafts"] > 0
    assert resumed["per_pos"][0] >= 0.95 * resumed["vllm:spec_decode_num_drafts"]


TD_PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n\ndef main():",
    "class Stack:\n    def __init__(self):",
    "def read_lines(path):\n    with open(path) as f:",
    "def is_prime(n: int) -> bool:",
    "def merge_sort(items):\n    if len(items) <= 1:",
    "class Point:\n    def __init__(self, x, y):",
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(",
]


def test_td_tau_after_resume_matches_never_skipping():
    """Embedded trained PARD-2 pair, TD mode, k = 8: each prompt alone (never
    skips), then beside a companion that holds it at k = 0 for 12 steps (its
    prompt and first tokens go through catch-up with zero features, the first
    regular row keeps its carried feature). Outputs are identical and tau
    (bonus counted) after the resume is within 5% of never skipping."""
    from pathlib import Path

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    import vllm_pard2

    root = Path(vllm_pard2.__file__).parent / "assets" / "tiny_pard2"
    tok = AutoTokenizer.from_pretrained(str(root / "target"))
    prompts = [{"prompt_token_ids": tok(p)["input_ids"]} for p in TD_PROMPTS]
    k = 8
    spec = {
        "method": "pard2",
        "model": str(root / "draft"),
        "num_speculative_tokens": k,
        "pard2_mode": "target_dependent",
        "num_speculative_tokens_per_batch_size": [[1, 1, k], [2, 256, 0]],
    }
    llm = LLM(model=str(root / "target"), speculative_config=spec, **engine_kwargs(enable_prefix_caching=False))
    try:
        long = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
        companion = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
        c0 = _counters(llm)
        alone = [llm.generate([p], long, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
        c1 = _counters(llm)
        resumed = [
            llm.generate([p, prompts[(i + 1) % len(prompts)]], [long, companion], use_tqdm=False)[0]
            .outputs[0]
            .token_ids
            for i, p in enumerate(prompts)
        ]
        c2 = _counters(llm)
    finally:
        shutdown(llm)
    assert resumed == alone
    never, after = tau(_delta(c1, c0)), tau(_delta(c2, c1))
    print(f"TD tau: never skipping {never:.3f}, after resume {after:.3f}")
    assert after >= 0.95 * never
