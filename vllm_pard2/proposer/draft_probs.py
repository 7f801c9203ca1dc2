"""Probabilistic drafts in memory that vLLM's profile run has counted.

vLLM samples probabilistic drafts with ``compute_probs_and_sample_next_token``
(``llm_base_proposer.py``): a float32 softmax q, a noise tensor and a clone of
q, each rows x vocab, about 3.7 GB at 256 requests x 8 drafts x Qwen3's 151936
tokens. Its profile run never computes draft logits (the drafter's
``dummy_run`` is the forward only), so none of it is in the KV-cache budget.

Here the per-step path needs much less and all of it is counted:

* q, which the rejection sampler reads in the next step (the runner keeps it
  across that step's target forward), goes into one persistent float32 buffer of
  ``max_num_seqs * K`` rows allocated with the proposer. vLLM's
  ``memory_profiling`` charges the KV cache with all memory consumed since
  the worker's first snapshot, so a buffer allocated before the profile's end
  is reserved like the draft's weights.
* the noise and the race scores ``q / E`` come in row chunks of at most
  ``NOISE_CHUNK_BYTES``, and there is no clone of q.
* ``reserve`` runs ``compute_logits`` and this sampler once over the full
  ``max_num_seqs * K`` rows; the proposer calls it from ``dummy_run`` in the
  profile run, so the transient peak (draft logits plus one noise chunk) is
  inside the measured window too.

Sampling is vLLM's: the same in-place temperature scaling, float32 softmax,
exponential race (argmax of q / E, E ~ Exp(1)), float64 noise when
``use_fp64_gumbel``, and argmax of q for greedy rows of a mixed batch. q is
the tensor the drafts were sampled from, so the rejection sampler's acceptance
stays exact. On CPU the tokens and q are bit-identical to vLLM's for the same
seed (the noise stream is sequential); on CUDA the chunked noise draws other
numbers of the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm.logger import init_logger
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.sampler import _SAMPLING_EPS

logger = init_logger(f"vllm.{__name__}")

# Largest noise chunk; at Qwen3's vocabulary this is ~440 float32 rows, so a
# full 256 x 8 batch takes five chunks.
NOISE_CHUNK_BYTES = 256 << 20


class DraftProbs:
    """The persistent q buffer and the chunked sampler that fills it."""

    def __init__(
        self,
        max_rows: int,
        vocab_size: int,
        device: torch.device | str,
        use_fp64_gumbel: bool = False,
        noise_chunk_bytes: int = NOISE_CHUNK_BYTES,
    ) -> None:
        self.max_rows = max_rows
        self.noise_dtype = torch.float64 if use_fp64_gumbel else torch.float32
        self.noise_chunk_bytes = noise_chunk_bytes
        self.q = torch.empty(max_rows, vocab_size, dtype=torch.float32, device=device)

    def _q_rows(self, num_rows: int, vocab_size: int) -> torch.Tensor:
        if vocab_size != self.q.shape[1]:
            # Never seen with a vLLM draft (logits are trimmed to the vocabulary);
            # reallocating keeps drafting correct, and the profile run's
            # `reserve` does it inside the measured window.
            logger.warning_once("pard2: draft logits have %d columns, q buffer %d", vocab_size, self.q.shape[1])
            self.q = torch.empty(self.max_rows, vocab_size, dtype=torch.float32, device=self.q.device)
        if num_rows > self.max_rows:
            logger.warning_once("pard2: %d draft rows exceed the reserved %d", num_rows, self.max_rows)
            return torch.empty(num_rows, vocab_size, dtype=torch.float32, device=self.q.device)
        return self.q[:num_rows]

    def sample(
        self, logits: torch.Tensor, temperature: torch.Tensor, all_random: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft ids [rows] and their distributions q [rows, vocab] (a view of the buffer).

        ``logits`` is scaled in place, as vLLM does; ``temperature`` has one entry per row.
        """
        num_rows, vocab_size = logits.shape
        q = self._q_rows(num_rows, vocab_size)
        if not all_random:
            is_greedy = temperature < _SAMPLING_EPS
            temperature = torch.where(is_greedy, 1.0, temperature)
        logits.div_(temperature.view(-1, 1))
        row_bytes = vocab_size * self.noise_dtype.itemsize
        chunk_rows = max(1, min(num_rows, self.noise_chunk_bytes // row_bytes))
        noise = torch.empty(chunk_rows, vocab_size, dtype=self.noise_dtype, device=logits.device)
        token_ids = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
        for start in range(0, num_rows, chunk_rows):
            end = min(start + chunk_rows, num_rows)
            q_rows = q[start:end]
            torch.softmax(logits[start:end], dim=-1, dtype=torch.float32, out=q_rows)
            scores = noise[: end - start].exponential_()
            if scores.dtype == q_rows.dtype:
                torch.div(q_rows, scores, out=scores)
            else:  # float64 noise: vLLM's order, 1/E then times q
                scores.reciprocal_().mul_(q_rows)
            torch.argmax(scores, dim=-1, out=token_ids[start:end])
        if not all_random:
            token_ids = torch.where(is_greedy, q.argmax(dim=-1), token_ids)
        return token_ids, q

    def sample_with_metadata(
        self, logits: torch.Tensor, sampling_metadata: SamplingMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample`` for a parallel draft: k request-major rows per request share its temperature."""
        temperature = sampling_metadata.temperature
        assert temperature is not None and logits.shape[0] % temperature.shape[0] == 0
        rows_per_request = logits.shape[0] // temperature.shape[0]
        if rows_per_request != 1:
            temperature = temperature.repeat_interleave(rows_per_request, dim=0)
        return self.sample(logits, temperature, sampling_metadata.all_random)

    def reserve(
        self, compute_logits: Callable[[torch.Tensor], torch.Tensor | None], hidden_size: int, dtype: torch.dtype
    ) -> None:
        """Run one step's whole sampling path at its largest size: ``max_rows``
        hidden rows, their logits, and a mixed-batch sample (the superset of the
        all-random path), so an allocator peak measured around it covers every step."""
        device = self.q.device
        hidden = torch.zeros(self.max_rows, hidden_size, dtype=dtype, device=device)
        logits = compute_logits(hidden)
        if logits is None:  # a tensor-parallel rank that does not gather logits
            return
        temperature = torch.ones(self.max_rows, dtype=torch.float32, device=device)
        self.sample(logits, temperature, all_random=False)
