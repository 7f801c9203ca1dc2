"""Sampling pieces that must hold on every platform for lossless speculation."""

from __future__ import annotations

import torch


def expand_batch_to_tokens(
    x: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """Repeat per-request values once per draft token, in the input's dtype.

    ``x = [a, b, c]`` with ``cu_num_tokens = [2, 5, 6]`` gives
    ``[a, a, b, b, b, c]``; entries equal to ``replace_from`` become
    ``replace_to`` (vLLM uses this to turn greedy's temperature 0 into 1).
    Same contract as ``vllm.v1.sample.rejection_sampler.expand_batch_to_tokens``;
    ``output_size`` keeps it free of a host synchronisation.
    """
    counts = torch.diff(cu_num_tokens, prepend=cu_num_tokens.new_zeros(1))
    values = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
    return torch.repeat_interleave(values, counts, output_size=num_tokens)
