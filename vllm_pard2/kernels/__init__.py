"""pard2 drafter-step input kernels: Triton on CUDA when triton imports, the torch reference otherwise.

Run-time caller: the vLLM 0.34 adapter (``vllm_pard2.vllm034.speculator`` builds
every drafter step's inputs with :func:`build_draft_inputs` and, in
target-dependent mode, its features with :func:`gather_draft_features`;
``vllm034.cudagraph`` keeps persistent :class:`DraftInputs` buffers). On
vLLM 0.32 the proposer uses vLLM's own in-tree input build instead.

There is one implementation per kernel in each language: the torch version in
:mod:`.reference` is both the CPU path and the test oracle; the Triton version
(:mod:`.draft_inputs`) is imported only when used, because
``vllm.triton_utils`` is a placeholder on CPU and Triton decides interpreter
vs compiled mode when a kernel module is imported.

``impl``: ``"auto"`` (Triton for CUDA tensors when importable, else torch),
``"torch"`` or ``"triton"`` (e.g. CPU tensors under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from typing import Literal

import torch

from vllm_pard2.kernels.reference import (
    NO_FEATURE_ROW,
    PADDING_SLOT_ID,
    DraftInputs,
    build_draft_inputs_reference,
    draft_input_views,
    gather_draft_features,
)

Impl = Literal["auto", "torch", "triton"]

__all__ = [
    "NO_FEATURE_ROW",
    "PADDING_SLOT_ID",
    "DraftInputs",
    "build_draft_inputs",
    "gather_draft_features",
    "triton_available",
    "use_triton",
]


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(device: torch.device, impl: Impl = "auto") -> bool:
    """Whether a kernel call on ``device`` runs the Triton version."""
    if impl == "torch":
        return False
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' but triton is not installed")
        return True
    return device.type == "cuda" and triton_available()


def build_draft_inputs(
    target_token_ids: torch.Tensor,
    target_positions: torch.Tensor,
    next_token_ids: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_rejected: torch.Tensor | None,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    num_speculative_tokens: int,
    mask_token_id: int,
    block_size: int,
    max_model_len: int,
    padding_token_id: int = 0,
    max_query_len: int | None = None,
    out: DraftInputs | None = None,
    impl: Impl = "auto",
) -> DraftInputs:
    """Drafter inputs for one pard2 step from the target step's (padded) rows.

    ``query_start_loc``/``seq_lens``/``block_table`` are the target step's
    attention metadata; ``num_rejected[i]`` counts the rejected drafts at the
    end of request i's rows (None: none); ``next_token_ids[i]`` is the bonus
    (or, for a partial prefill, the backup) token. ``max_query_len`` only
    sizes the Triton grid. ``out``: persistent buffers (e.g. for CUDA-graph
    capture) at least as long as this batch needs; prefix views of them are
    returned. See :class:`DraftInputs` for the outputs.
    """
    kwargs = dict(
        num_speculative_tokens=num_speculative_tokens,
        mask_token_id=mask_token_id,
        block_size=block_size,
        max_model_len=max_model_len,
        padding_token_id=padding_token_id,
    )
    args = (target_token_ids, target_positions, next_token_ids, query_start_loc, num_rejected, seq_lens, block_table)
    if use_triton(target_token_ids.device, impl):
        from vllm_pard2.kernels.draft_inputs import build_draft_inputs_triton

        return build_draft_inputs_triton(*args, max_query_len=max_query_len, out=out, **kwargs)
    result = build_draft_inputs_reference(*args, **kwargs)
    if out is None:
        return result
    views = draft_input_views(out, target_token_ids.shape[0], next_token_ids.shape[0], num_speculative_tokens)
    for field in dataclasses.fields(DraftInputs):
        getattr(views, field.name).copy_(getattr(result, field.name))
    return views
