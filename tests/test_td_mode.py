"""PARD-2 target-dependent (TD) mode.

- The feature plumbing (HF layer indices -> vLLM capture, projection block
  order, per-row feature sources, carried state) against hand-made cases.
- The published checkpoint layout: config keys and ``warp_model.bin`` /
  ``warp_model.safetensors``, with clear errors for malformed files.
- ``pard2_mode``: auto picks TD when the projection fits the target and TI
  when it does not; forcing TD on a mismatched target fails before any engine
  starts, naming the mismatch.
- The oracle: every draft the vLLM TD path makes equals the plain-PyTorch
  reference (``tests/hf_reference.py``) on the HF models for the same context,
  including the first step after prefill (zero feature at position 0), steps
  after partial acceptance, chunked prefill and a prefix-cache hit.
Greedy losslessness of TD mode runs with the core's suite (test_lossless.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vllm_pard2.checkpoint import load_projection, read_pard2_spec, resolve_mode, target_dependent_blockers
from vllm_pard2.config import Pard2ConfigError
from vllm_pard2.proposer.target_features import (
    FeatureCarry,
    draft_row_sources,
    fuse_features,
    permute_projection,
    plan_layers,
)

from conftest import engine_kwargs, shutdown

K = 4
NEAR_TIE = 1.0  # logits; the draft head's logit spread is ~10


# --- feature plumbing ------------------------------------------------------


def test_plan_layers_maps_hf_indices_to_capture_ids():
    plan = plan_layers((-1, -2, -4), num_layers=4)
    # HF -1 = after the final norm (capture id 4 + norm), -2 = after 3 layers, -4 = after 1.
    assert plan.aux_layer_ids == (1, 3, 4)
    assert plan.hf_to_aux_block == (2, 1, 0)
    assert plan.normed_block == 2
    # Index N is also the normed state; duplicates share one captured block.
    plan = plan_layers((0, 4, -1), num_layers=4)
    assert plan.aux_layer_ids == (0, 4)
    assert plan.hf_to_aux_block == (0, 1, 1)
    assert plan.normed_block == 1


def test_permuted_projection_reads_capture_order():
    hidden, layers = 8, (-1, -8, 0, -1)
    plan = plan_layers(layers, num_layers=8)
    states = {i: torch.randn(5, hidden) for i in plan.aux_layer_ids}  # capture id -> state
    resolved = [i + 9 if i < 0 else i for i in layers]
    hf_order = torch.cat([states[i] for i in resolved], dim=-1)
    capture_order = torch.cat([states[i] for i in plan.aux_layer_ids], dim=-1)
    weight = torch.randn(3, len(layers) * hidden)
    torch.testing.assert_close(
        capture_order @ permute_projection(weight, plan, hidden).T, hf_order @ weight.T, rtol=1e-5, atol=1e-5
    )


def test_draft_row_sources_follow_the_parallel_draft_layout():
    # Request 0: a 4-token prefill. Request 1: a decode step (last token + 3
    # drafts) where 1 draft was accepted, 2 rejected. k = 3 extra slots each.
    qsl = torch.tensor([0, 4, 8])
    rejected = torch.tensor([0, 2])
    source, first_row, last_valid = draft_row_sources(qsl, rejected, extra_slots=3, num_draft_rows=14)
    # req 0 rows: [t0 t1 t2 t3 | bonus m m]; req 1 rows: [t4 t5 | bonus m m | pad pad]
    assert source[:7].tolist() == [0, 0, 1, 2, 3, 3, 3]  # row 0 is replaced by the carried state
    assert source[7:12].tolist() == [3, 4, 5, 5, 5]  # row 7 (first of req 1) too
    assert first_row.tolist() == [0, 7]
    assert last_valid.tolist() == [3, 5]


def test_carried_feature_used_only_at_the_next_position():
    carry = FeatureCarry(width=2, dtype=torch.float32, device=torch.device("cpu"), capacity=1)
    zero = torch.tensor([-1.0, -1.0])
    out = torch.empty(16, 2)
    projected = torch.arange(8.0).reshape(4, 2)  # rows 0..3 of this step
    live = {"a"}

    def slot_a():
        return carry.on_device(carry.host_slots(["a"], live))

    # Step 1: prefill of positions 0..3 -> row 0 gets the zero feature.
    fuse_features(projected, torch.arange(4), torch.tensor([0, 4]), None, 2, 6, zero, carry, slot_a(), out)
    assert out[0].tolist() == [-1.0, -1.0]
    assert out[1:6].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [6, 7]]
    # Step 2 continues at position 4: its first row gets position 3's feature.
    step2 = projected + 100
    fuse_features(step2, torch.tensor([4, 5]), torch.tensor([0, 2]), None, 2, 4, zero, carry, slot_a(), out)
    assert out[0].tolist() == [6, 7]
    # A request resuming at another position (prefix hit, preemption) gets zero.
    fuse_features(step2, torch.tensor([9, 10]), torch.tensor([0, 2]), None, 2, 4, zero, carry, slot_a(), out)
    assert out[0].tolist() == [-1.0, -1.0]
    # Finished requests give their slot back; the table grows when full.
    carry.host_slots(["b", "c"], {"b", "c"})
    assert carry.value.shape[0] == 2


def test_stashed_rows_are_projected_once_when_a_drafting_step_needs_them():
    """k = 0 steps stash raw captured rows; ``resolve`` projects only the stashed
    slots it is asked for, once, and a finished request's stash is dropped."""
    carry = FeatureCarry(width=2, dtype=torch.float32, device=torch.device("cpu"), capacity=2)
    calls = []

    def projection(raw):
        calls.append(raw.shape[0])
        return raw[:, :2] * 10

    a, b = carry.host_slots(["a", "b"], {"a", "b"})
    carry.value[b] = torch.tensor([7.0, 7.0])
    carry.stash([a], torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([5]))
    assert carry.position[a].item() == 5 and carry.value[a].tolist() == [0.0, 0.0]
    carry.stash([a], torch.tensor([[4.0, 5.0, 6.0]]), torch.tensor([6]))  # the newest row wins
    carry.resolve([a, b], projection)
    assert calls == [1] and carry.value[a].tolist() == [40.0, 50.0] and carry.value[b].tolist() == [7.0, 7.0]
    carry.resolve([a, b], projection)
    assert calls == [1]  # nothing stashed any more
    carry.stash([b], torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([3]))
    carry.host_slots(["c", "d", "e"], {"c", "d", "e"})  # a, b finished; the table grows
    assert carry.raw.shape[0] == carry.value.shape[0] == 4
    carry.resolve(list(range(4)), projection)
    assert calls == [1]


# --- checkpoint layout ------------------------------------------------------


def test_published_config_keys_and_fallbacks(tiny_pair):
    cfg = json.loads((tiny_pair["draft_td"] / "config.json").read_text())
    for key in (
        "pard2",
        "spd_type",
        "pard_token",
        "pard2_scale",
        "pard2_proj_bias",
        "pard2_target_dim",
        "pard2_target_layers",
    ):
        assert key in cfg
    assert (tiny_pair["draft_td"] / "warp_model.bin").is_file()

    class Old:  # keys of older releases
        spd_type, feat_scale, proj_bias, pard2_target_layers = "pard2", 0.5, True, [-1]

    spec = read_pard2_spec(Old())
    assert (spec.is_pard2, spec.scale, spec.proj_bias, spec.target_dim) == (True, 0.5, True, 4096)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ([1, 2, 3], "must hold a state dict"),
        ({"proj.weight": torch.zeros(128, 384)}, "must hold a state dict"),
        ({"target_proj.weight": torch.zeros(128, 256)}, "has shape (128, 256)"),
        ({"target_proj.weight": torch.zeros(128, 384)}, "has no target_proj.bias"),
        ({"target_proj.weight": torch.zeros(128, 384), "target_proj.bias": torch.zeros(64)}, "expected (128,)"),
    ],
)
def test_malformed_projection_file(tmp_path, tiny_pair, content, fragment):
    path = tmp_path / "warp_model.bin"
    torch.save(content, path)
    spec = read_pard2_spec(_config(tiny_pair["draft_td"]))
    with pytest.raises(Pard2ConfigError) as info:
        load_projection(path, spec, draft_hidden=128)
    assert fragment in str(info.value)


def test_projection_file_not_a_torch_file(tmp_path, tiny_pair):
    path = tmp_path / "warp_model.bin"
    path.write_text("not a checkpoint")
    with pytest.raises(Pard2ConfigError, match="cannot read the target projection"):
        load_projection(path, read_pard2_spec(_config(tiny_pair["draft_td"])), draft_hidden=128)


def test_safetensors_projection_loads(tmp_path, tiny_pair):
    from safetensors.torch import save_file

    state = torch.load(tiny_pair["draft_td"] / "warp_model.bin", weights_only=True)
    save_file(state, str(tmp_path / "warp_model.safetensors"))
    spec = read_pard2_spec(_config(tiny_pair["draft_td"]))
    loaded = load_projection(tmp_path / "warp_model.safetensors", spec, draft_hidden=128)
    torch.testing.assert_close(loaded["weight"], state["target_proj.weight"])


def test_mode_resolution_rules():
    assert resolve_mode(None, [], "d") == "target_dependent"
    assert resolve_mode("auto", ["x"], "d") == "target_independent"
    assert resolve_mode("target_independent", [], "d") == "target_independent"
    with pytest.raises(Pard2ConfigError, match="x; y"):
        resolve_mode("target_dependent", ["x", "y"], "d")
    spec = read_pard2_spec(type("C", (), {"pard2_target_layers": [-1, -2], "pard2_target_dim": 384})())
    blockers = target_dependent_blockers(spec, None, 128, 4, False, "Foo")
    assert any("2 target layers x target hidden size 128 = 256" in b for b in blockers)
    assert any("no target projection file" in b for b in blockers)
    assert any("Foo cannot return intermediate hidden states" in b for b in blockers)


# --- pard2_mode through vLLM's config (front end, no engine) ---------------


def _config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def _vllm_config(target: Path, draft: Path, **extra):
    from vllm.engine.arg_utils import EngineArgs

    spec = {"method": "pard2", "model": str(draft), "num_speculative_tokens": K, "pard2_adaptive_k": False, **extra}
    return EngineArgs(model=str(target), speculative_config=spec, **engine_kwargs()).create_engine_config()


@pytest.fixture(scope="module")
def draft_without_projection(tiny_pair, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("td") / "no_projection"
    shutil.copytree(tiny_pair["draft_td"], path)
    (path / "warp_model.bin").unlink()
    return path


def test_auto_picks_target_dependent_when_it_fits(tiny_pair):
    config = _vllm_config(tiny_pair["target"], tiny_pair["draft_td"])
    assert config.speculative_config.pard2_mode == "target_dependent"
    forced_ti = _vllm_config(tiny_pair["target"], tiny_pair["draft_td"], pard2_mode="target_independent")
    assert forced_ti.speculative_config.pard2_mode == "target_independent"
    assert forced_ti.compute_hash() != config.compute_hash(), "the compile cache must tell the modes apart"


def test_auto_falls_back_to_target_independent(tiny_pair, draft_without_projection):
    # Another target of the family (same vocabulary, hidden 64, 2 layers).
    assert _vllm_config(tiny_pair["draft_qwen3"], tiny_pair["draft_td"]).speculative_config.pard2_mode == (
        "target_independent"
    )
    assert _vllm_config(tiny_pair["target"], draft_without_projection).speculative_config.pard2_mode == (
        "target_independent"
    )


def test_forced_target_dependent_on_mismatched_target_fails_early(tiny_pair):
    with pytest.raises(Pard2ConfigError) as info:
        _vllm_config(tiny_pair["draft_qwen3"], tiny_pair["draft_td"], pard2_mode="target_dependent")
    message = str(info.value)
    assert "pard2_target_dim is 384 but 3 target layers x target hidden size 64 = 192" in message
    assert "[-4]" in message and "2 layers" in message


def test_forced_target_dependent_without_projection_fails_early(tiny_pair, draft_without_projection):
    with pytest.raises(Pard2ConfigError, match="no target projection file"):
        _vllm_config(tiny_pair["target"], draft_without_projection, pard2_mode="target_dependent")


def test_bad_pard2_mode_values(tiny_pair):
    with pytest.raises(Pard2ConfigError, match="pard2_mode must be one of"):
        _vllm_config(tiny_pair["target"], tiny_pair["draft_td"], pard2_mode="td")
    from vllm.engine.arg_utils import EngineArgs

    spec = {"method": "draft_model", "model": str(tiny_pair["draft_copy"]), "num_speculative_tokens": 2}
    with pytest.raises(Pard2ConfigError, match="applies to method 'pard2' only"):
        EngineArgs(
            model=str(tiny_pair["target"]), speculative_config={**spec, "pard2_mode": "auto"}
        ).create_engine_config()


# --- the oracle ----------------------------------------------------------------


class DraftRecorder:
    """Wraps the in-process drafter's ``propose`` and keeps, per request and
    step, the position of the bonus token, the bonus token and the drafts."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.records: list[dict] = []
        self._propose = runner.drafter.propose
        runner.drafter.propose = self

    def __call__(self, *args, **kwargs):
        drafts = self._propose(*args, **kwargs)
        cad = kwargs["common_attn_metadata"]
        batch = cad.batch_size()
        qsl = cad.query_start_loc_cpu[: batch + 1].tolist()
        rejected = kwargs["num_rejected_tokens_gpu"]
        rejected = [0] * batch if rejected is None else rejected.tolist()
        positions = kwargs["target_positions"].tolist()
        bonus = kwargs["next_token_ids"].tolist()
        for i, req_id in enumerate(self.runner.input_batch.req_ids[:batch]):
            num_valid = qsl[i + 1] - qsl[i] - rejected[i]
            self.records.append(
                {
                    "request": req_id.rsplit("-", 1)[0],
                    "start": positions[qsl[i]],
                    "num_valid": num_valid,
                    "bonus_pos": positions[qsl[i]] + num_valid,
                    "bonus": bonus[i],
                    "drafts": drafts[i].tolist(),
                }
            )
        return drafts


@pytest.fixture(scope="module")
def oracle_run(tiny_pair, prompts):
    """One in-process TD engine (so the test can reach the drafter): small
    prefill chunks, prefix caching; requests alone, batched, and one that hits
    the prefix cache of an earlier one."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = {
        "method": "pard2",
        "model": str(tiny_pair["draft_td"]),
        "num_speculative_tokens": K,
        "pard2_adaptive_k": False,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = LLM(
            model=str(tiny_pair["target"]),
            speculative_config=spec,
            **engine_kwargs(enable_prefix_caching=True, max_num_batched_tokens=32),
        )
    try:
        runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
        recorder = DraftRecorder(runner)
        params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
        chosen = [prompts[i] for i in (0, 2, 6, 13)]  # 3, 8, 55 and 40 tokens
        finished = {}
        for p in chosen[:2]:
            out = llm.generate([TokensPrompt(prompt_token_ids=p)], params, use_tqdm=False)[0]
            finished[out.request_id] = (p, out)
        batch = [TokensPrompt(prompt_token_ids=p) for p in chosen[2:]] + [
            TokensPrompt(prompt_token_ids=prompts[16] + prompts[17][:150])  # fresh 166-token prompt
        ]
        for out in llm.generate(batch, params, use_tqdm=False):
            finished[out.request_id] = (out.prompt_token_ids, out)
        # Shares the long prompt's first 160 tokens: a prefix-cache hit.
        hit = prompts[16] + prompts[17][:144] + prompts[3][:5]
        out = llm.generate([TokensPrompt(prompt_token_ids=hit)], params, use_tqdm=False)[0]
        finished[out.request_id] = (hit, out)
    finally:
        shutdown(llm)
    return recorder.records, finished


def test_td_drafts_equal_the_reference(tiny_pair, oracle_run):
    """Every draft equals the reference's, except at float near-ties: a
    differing draft is tolerated only where the reference's own logits put the
    vLLM token within NEAR_TIE of its top token (mask positions of a random
    draft have small margins), and on at most 2% of steps."""
    from hf_reference import ReferenceDrafter

    records, finished = oracle_run
    reference = ReferenceDrafter(tiny_pair["target"], tiny_pair["draft_td"])
    near_ties, mismatches, differs_from_ti = 0, [], 0
    for rec in records:
        prompt, out = finished[rec["request"]]
        sequence = list(prompt) + list(out.outputs[0].token_ids)
        context = sequence[: rec["bonus_pos"]] + [rec["bonus"]]
        cached = out.num_cached_tokens or 0
        logits = reference.draft_logits(context, K, zero_feature_rows=[cached] if cached else [])
        want = logits.argmax(dim=-1).tolist()
        if want != rec["drafts"]:
            i = next(i for i, (a, b) in enumerate(zip(want, rec["drafts"], strict=True)) if a != b)
            gap = (logits[i, want[i]] - logits[i, rec["drafts"][i]]).item()
            if gap < NEAR_TIE:
                near_ties += 1
            else:
                mismatches.append((rec, want, gap))
        differs_from_ti += reference.draft_step(context, K, target_dependent=False) != rec["drafts"]
    assert not mismatches, f"{len(mismatches)} of {len(records)} steps differ, first: {mismatches[0]}"
    assert near_ties <= 0.02 * len(records), f"{near_ties} near-tie differences in {len(records)} steps"
    # The features really steer the drafts (a TI draft would differ).
    assert differs_from_ti > len(records) // 3


def test_oracle_covers_the_cases(oracle_run):
    records, finished = oracle_run
    prompt_len = {rid: len(p) for rid, (p, _) in finished.items()}
    after_prefill = [r for r in records if r["bonus_pos"] == prompt_len[r["request"]]]
    assert any(r["start"] == 0 for r in after_prefill), "first step after a one-chunk prefill (zero feature at 0)"
    assert any(r["start"] > 0 for r in after_prefill), "first step after a chunked prefill"
    decode = [r for r in records if r["start"] >= prompt_len[r["request"]]]
    assert any(1 < r["num_valid"] <= K for r in decode), "a step after partial acceptance"
    assert any(r["num_valid"] == 1 for r in decode), "a step after full rejection"
    assert any((out.num_cached_tokens or 0) > 0 for _, out in finished.values()), "a prefix-cache hit"
