"""The PARD attention rule for a padded batch, as a dense bool mask or a FlexAttention BlockMask.

A batch is two [B, W] vectors per sample: ``depth`` (0 real token, d >= 1 mask
at depth d, -1 padding) and ``position`` (position id j). Whether query q may
attend to key k is a function of those four numbers only (see ``layout.py``),
so the same rule serves both paths:

- ``dense``: a [B, 1, W, W] bool mask built by broadcasting on the training
  device (1 byte a cell, 4x less than an additive float32 mask) for SDPA;
- ``flex``: the rule as a FlexAttention ``mask_mod`` and a block-sparse
  ``BlockMask``: only the 128x128 tiles with an allowed cell are computed, and
  no (K·L)² tensor exists. torch 2.13 has no FlexAttention backward on CPU, so
  training uses it on GPU only (``config.py`` rejects ``flex`` on CPU).

Padding queries see only themselves, so no row is fully masked (SDPA would
return NaN there); padding keys are seen by no real entry.
"""

from __future__ import annotations

import torch


def pard_allowed(
    dq: torch.Tensor, jq: torch.Tensor, dk: torch.Tensor, jk: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
) -> torch.Tensor:
    """Query (depth dq, position jq) may attend to key (dk, jk); element-wise, broadcasts."""
    real_context = (dq >= 0) & (dk == 0) & (jk <= jq - dq)
    own_chain = (dk >= 1) & (dk <= dq) & (jq - jk == dq - dk)
    padding_self = (dq < 0) & (q_idx == kv_idx)
    return real_context | own_chain | padding_self


def dense_mask(depth: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """[B, 1, W, W] bool mask (True = attend) for SDPA, on the device of ``depth``."""
    width = depth.shape[1]
    idx = torch.arange(width, device=depth.device)
    allowed = pard_allowed(
        depth[:, :, None], position[:, :, None], depth[:, None, :], position[:, None, :], idx[:, None], idx[None, :]
    )
    return allowed[:, None]


def pard_mask_mod(depth: torch.Tensor, position: torch.Tensor):
    """The rule as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` over the batch vectors."""

    def mask_mod(b, h, q_idx, kv_idx):
        return pard_allowed(depth[b, q_idx], position[b, q_idx], depth[b, kv_idx], position[b, kv_idx], q_idx, kv_idx)

    return mask_mod


def flex_block_mask(depth: torch.Tensor, position: torch.Tensor):
    """A block-sparse ``BlockMask`` for the batch; compiled mask construction on GPU
    (it never materialises the dense mask there)."""
    from torch.nn.attention.flex_attention import create_block_mask

    bsz, width = depth.shape
    return create_block_mask(
        pard_mask_mod(depth, position),
        bsz,
        None,
        width,
        width,
        device=depth.device,
        _compile=depth.device.type == "cuda",
    )


def build_mask(kind: str, depth: torch.Tensor, position: torch.Tensor):
    """``kind`` is the resolved attention path: 'flex' or 'dense'."""
    return flex_block_mask(depth, position) if kind == "flex" else dense_mask(depth, position)
