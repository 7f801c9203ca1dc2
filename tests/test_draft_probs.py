"""Probabilistic drafts within vLLM's memory budget (``vllm_pard2.proposer.draft_probs``).

Memory is measured, not computed: ``torch.profiler`` with ``profile_memory=True``
records every CPU allocator allocation and free with its size, and the running
sum gives the allocated-bytes timeline (CPU torch keeps no peak statistics).
That is the quantity vLLM's GPU worker measures (``allocated_bytes.all.peak``):
the KV cache is charged with the memory held after the profile run plus the
run's transient peak (peak - held), so a step is safe when its own transient
peak fits in that headroom.

* sampling: the chunked sampler gives the same tokens and the same q as vLLM's
  ``compute_probs_and_sample_next_token`` for the same seed, bit for bit
  (all-random, mixed greedy, float64 noise, bfloat16 logits);
* engine-free: the profile-time reservation covers every step up to the
  configured max batch, the per-step transient is the logits plus one noise
  chunk, and vLLM's own path at that batch would not fit the reservation;
* engine: in a pard2 engine, ``GPUModelRunner.profile_run`` (the function the
  GPU worker's ``determine_available_memory`` measures) has a transient peak
  at least the draft-sampling peak of real max-batch steps, and the q the
  runner keeps is the reserved buffer, not a copy.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.spec_decode.llm_base_proposer import compute_probs_and_sample_next_token

from vllm_pard2.proposer.draft_probs import DraftProbs

from conftest import engine_kwargs, shutdown

QWEN3_VOCAB = 151936
HIDDEN = 64


def allocation_peak(fn):
    """(peak, held, result): CPU allocator bytes above the level at entry, at the
    peak of ``fn`` and at its end, from the profiler's allocation records."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        level += record.nbytes()
        peak = max(peak, level)
    return peak, level, result


def sampling_metadata(temperature: list[float]) -> SamplingMetadata:
    """Per-request metadata as the runner builds it; the draft samplers read the temperature and the flags."""
    values = torch.tensor(temperature, dtype=torch.float32)
    fields = {f.name: None for f in dataclasses.fields(SamplingMetadata) if f.default is dataclasses.MISSING}
    return SamplingMetadata(
        **{
            **fields,
            "temperature": values,
            "all_greedy": bool((values < 1e-5).all()),
            "all_random": bool((values >= 1e-5).all()),
            "generators": {},
            "no_penalties": True,
            "output_token_ids": [],
            "bad_words_token_ids": {},
        }
    )


def vllm_draft_sample(logits: torch.Tensor, metadata: SamplingMetadata, use_fp64_gumbel: bool = False):
    """vLLM's own path for parallel drafts (``SpecDecodeBaseProposer._sample_from_logits``)."""
    rows_per_request = logits.shape[0] // metadata.temperature.shape[0]
    metadata = dataclasses.replace(metadata, temperature=metadata.temperature.repeat_interleave(rows_per_request))
    return compute_probs_and_sample_next_token(logits, metadata, use_fp64_gumbel)


@pytest.mark.parametrize(
    ("temperature", "use_fp64_gumbel", "dtype"),
    [
        ([1.0, 0.7, 1.3, 0.5, 2.0], False, torch.float32),
        ([1.0, 0.0, 0.7, 0.0, 1.3], False, torch.float32),
        ([1.0, 0.0, 0.7, 0.0, 1.3], True, torch.float32),
        ([0.9, 1.1, 0.0, 1.0, 0.6], False, torch.bfloat16),
    ],
    ids=["all-random", "mixed-greedy", "fp64-noise", "bf16-logits"],
)
def test_chunked_sampling_is_vllms_sampling(temperature, use_fp64_gumbel, dtype):
    k, vocab = 4, 3000
    rows = len(temperature) * k
    # Three rows per noise chunk: seven chunks for 20 rows, the last one short.
    draft = DraftProbs(rows, vocab, "cpu", use_fp64_gumbel, noise_chunk_bytes=3 * vocab * (8 if use_fp64_gumbel else 4))
    metadata = sampling_metadata(temperature)
    logits = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    for seed in range(3):
        torch.manual_seed(seed)
        got_ids, got_q = draft.sample_with_metadata(logits.clone(), metadata)
        torch.manual_seed(seed)
        want_ids, want_q = vllm_draft_sample(logits.clone(), metadata, use_fp64_gumbel)
        assert torch.equal(got_ids, want_ids)
        assert torch.equal(got_q, want_q)
        assert got_q.data_ptr() == draft.q.data_ptr()  # q is the reserved buffer, no copy
    greedy_rows = torch.tensor(temperature).repeat_interleave(k) == 0.0
    assert torch.equal(got_ids[greedy_rows], logits.float()[greedy_rows].argmax(dim=-1))


def test_reservation_covers_every_step_up_to_the_max_batch():
    """Qwen3's vocabulary, max_num_seqs 8, K 8 (64 draft rows), 8 MiB noise chunks."""
    max_num_seqs, max_k = 8, 8
    max_rows = max_num_seqs * max_k
    chunk_bytes = 8 << 20
    head = torch.nn.Linear(HIDDEN, QWEN3_VOCAB, bias=False)

    def compute_logits(hidden):
        return head(hidden)

    def profile_window():
        # Created inside the window, as the proposer's buffer is after the
        # worker's first memory snapshot: charged to the KV cache as held memory.
        draft = DraftProbs(max_rows, QWEN3_VOCAB, "cpu", noise_chunk_bytes=chunk_bytes)
        draft.reserve(compute_logits, HIDDEN, torch.float32)
        return draft

    with torch.inference_mode():
        profile_peak, profile_held, draft = allocation_peak(profile_window)
        headroom = profile_peak - profile_held
        assert profile_held >= draft.q.nbytes == max_rows * QWEN3_VOCAB * 4

        def step(batch: int, k: int, metadata: SamplingMetadata):
            hidden = torch.randn(batch * k, HIDDEN)
            ids, q = draft.sample_with_metadata(compute_logits(hidden), metadata)
            assert q.data_ptr() == draft.q.data_ptr() and q.shape == (batch * k, QWEN3_VOCAB)
            return ids

        logits_bytes = max_rows * QWEN3_VOCAB * 4
        for batch, k, temperature, greedy_every in [(8, 8, 1.0, 0), (8, 8, 0.7, 3), (5, 8, 1.0, 0), (8, 4, 1.3, 2)]:
            temps = [0.0 if greedy_every and i % greedy_every == 0 else temperature for i in range(batch)]
            metadata = sampling_metadata(temps)  # the runner's, built before drafting
            peak, held, ids = allocation_peak(lambda: step(batch, k, metadata))  # noqa: B023
            assert ids.shape == (batch * k,)
            assert peak <= headroom, (batch, k, peak, headroom)
            assert held <= 1 << 20  # only the token ids outlive the step
        # At the max batch the transient is the logits plus one noise chunk (and
        # the small hidden and id tensors), not three q-sized tensors.
        assert peak <= logits_bytes + chunk_bytes + (1 << 20)

        def vllm_step():
            logits = compute_logits(torch.randn(max_rows, HIDDEN))
            return vllm_draft_sample(logits, sampling_metadata([1.0] * max_num_seqs))

        vllm_peak, _, _ = allocation_peak(vllm_step)
    # vLLM's path needs logits plus softmax, noise and clone at this size:
    # beyond the reservation by about two q buffers.
    assert vllm_peak >= logits_bytes + 3 * draft.q.nbytes
    assert vllm_peak > headroom + draft.q.nbytes


@pytest.fixture(scope="module")
def sampled_engine(tiny_pair):
    """One in-process pard2 engine (TD draft, default probabilistic drafts), max_num_seqs 16,
    k fixed at K = 4 so that full-batch steps draft max_num_seqs * K rows."""
    from vllm import LLM

    spec = {
        "method": "pard2",
        "model": str(tiny_pair["draft_td"]),
        "num_speculative_tokens": 4,
        "pard2_adaptive_k": False,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = LLM(
            model=str(tiny_pair["target"]),
            speculative_config=spec,
            **engine_kwargs(max_num_seqs=16, max_num_batched_tokens=256),
        )
    yield llm
    shutdown(llm)


def test_profile_run_peak_covers_max_batch_draft_sampling(sampled_engine):
    from vllm import SamplingParams
    from vllm.config import set_current_vllm_config
    from vllm.inputs import TokensPrompt

    llm = sampled_engine
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    drafter = runner.drafter
    max_rows = 16 * 4
    assert drafter.draft_probs is not None and drafter.draft_probs.q.shape[0] == max_rows

    reservations = []
    reserve = drafter.draft_probs.reserve
    drafter.draft_probs.reserve = lambda *args: reservations.append(reserve(*args))
    with set_current_vllm_config(runner.vllm_config), torch.inference_mode():
        profile_peak, profile_held, _ = allocation_peak(runner.profile_run)
    drafter.draft_probs.reserve = reserve
    assert len(reservations) == 1  # the drafter's dummy_run at max_num_batched_tokens
    headroom = profile_peak - profile_held

    steps = []  # (draft rows, transient peak above the level at entry)
    sample = drafter._sample_draft_tokens

    def measured_sample(hidden_states, metadata):
        peak, _, result = allocation_peak(lambda: sample(hidden_states, metadata))
        steps.append((hidden_states.shape[0], peak))
        assert result[1] is None or result[1].data_ptr() == drafter.draft_probs.q.data_ptr()
        return result

    kept = []  # whether the q the runner keeps for the next rejection is the buffer itself
    take = drafter.take_last_draft_probs

    def observed_take():
        q = take()
        kept.append(q is not None and q.data_ptr() == drafter.draft_probs.q.data_ptr())
        return q

    drafter._sample_draft_tokens = measured_sample
    drafter.take_last_draft_probs = observed_take
    try:
        prompts = [TokensPrompt(prompt_token_ids=[11 + 7 * i, 400 + i, 93, 250 - i]) for i in range(16)]
        llm.generate(prompts, SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    finally:
        del drafter._sample_draft_tokens, drafter.take_last_draft_probs
    with torch.inference_mode():  # the reservation alone, as dummy_run calls it
        reserve_peak, _, _ = allocation_peak(
            lambda: drafter.draft_probs.reserve(drafter.model.compute_logits, drafter.hidden_size, drafter.dtype)
        )
    step_peak = max(peak for _, peak in steps)
    print(f"profile headroom {headroom} B, reservation peak {reserve_peak} B, draft-sampling steps {steps}")
    assert any(rows == max_rows for rows, _ in steps), steps
    assert step_peak <= reserve_peak and step_peak <= headroom
    assert kept and all(kept), kept
