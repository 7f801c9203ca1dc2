"""PARD block layout with conditional drop-token (COD), built in vectorised torch.

A training sequence x_0..x_{L-1} becomes K depth blocks concatenated. Block 0
holds the real tokens; block d >= 1 holds mask tokens. The entry at (depth d,
position j) uses position id j, sees the real tokens x_0..x_{j-d} plus its own
mask chain (depth d-i at position j-i for 0 <= i < d), and predicts x_{j+1}:
exactly what a mask at offset d after the last real token x_{j-d} sees at
inference. COD keeps all L real tokens and, at depth d, a random subset of
``{kept positions of depth d-1} + 1`` so every kept entry keeps its full chain.

Entries whose label could never exist (position L-1 at depth >= 1) are not
candidates, which is why a full (r = 1) layout has L - d entries at depth d.
Masks are built per sample from two small vectors (depth, position) by
broadcasting, never as a Python loop over (K·L)² cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def cod_keep_counts(seq_len: int, para_num: int, ratio: float, min_ratio: float) -> list[int]:
    """Upper bound of kept entries per depth: n_d = int(L · max(r^d, r_min)); n_0 = L."""
    return [seq_len] + [int(seq_len * max(ratio**d, min_ratio)) for d in range(1, para_num)]


def sample_cod_positions(
    seq_len: int, para_num: int, ratio: float, min_ratio: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Kept positions per depth (sorted LongTensors); depth 0 keeps all positions.

    Depth d draws n_d positions uniformly without replacement from the
    candidates ``{j + 1 : j kept at depth d-1, j + 1 <= L - 2}``, capped at the
    number of candidates; drawing stops once a depth keeps nothing.
    """
    kept = [torch.arange(seq_len)]
    for limit in cod_keep_counts(seq_len, para_num, ratio, min_ratio)[1:]:
        candidates = kept[-1] + 1
        candidates = candidates[candidates <= seq_len - 2]
        n = min(limit, candidates.numel())
        if n == 0:
            break
        if n < candidates.numel():
            pick = torch.randperm(candidates.numel(), generator=generator)[:n]
            candidates = candidates[pick].sort().values
        kept.append(candidates)
    return kept


@dataclass
class BlockLayout:
    """One sample's packed layout: parallel vectors over its T entries."""

    depth: torch.Tensor  # [T] 0 = real token, d >= 1 = mask at depth d
    position: torch.Tensor  # [T] position id j

    @classmethod
    def from_kept(cls, kept: list[torch.Tensor]) -> BlockLayout:
        depth = torch.cat([torch.full_like(pos, d) for d, pos in enumerate(kept)])
        return cls(depth=depth, position=torch.cat(kept))

    def __len__(self) -> int:
        return int(self.depth.numel())

    def attention_allowed(self) -> torch.Tensor:
        """[T, T] bool: query row may attend to key column."""
        dq, jq = self.depth[:, None], self.position[:, None]
        dk, jk = self.depth[None, :], self.position[None, :]
        real_context = (dk == 0) & (jk <= jq - dq)
        own_chain = (dk >= 1) & (dk <= dq) & (jq - jk == dq - dk)
        return real_context | own_chain

    def input_ids(self, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
        """Real token at depth 0, ``mask_id`` elsewhere."""
        return torch.where(self.depth == 0, tokens[self.position], torch.full_like(self.position, mask_id))

    def labels(self, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """x_{j+1} where it exists and counts for the loss, else IGNORE_INDEX.

        ``loss_mask[t]`` says whether token t may be a label (e.g. only the
        final assistant turn)."""
        nxt = self.position + 1
        in_range = nxt < tokens.numel()
        safe = nxt.clamp(max=tokens.numel() - 1)
        valid = in_range & loss_mask[safe] & (self.position - self.depth >= 0)
        return torch.where(valid, tokens[safe], torch.full_like(safe, IGNORE_INDEX))

    def feature_index(self) -> torch.Tensor:
        """Which target feature row each entry adds: feat[j - 1 - d], -1 = zero feature.

        Block 0 pairs x_j with feat[j-1]; depth block d is shifted by d more,
        so every mask carries the feature of its chain's last real token."""
        return (self.position - 1 - self.depth).clamp(min=-1)


def cat_weights(
    layout: BlockLayout, token_logprob: torch.Tensor, labels: torch.Tensor, power: float = 1.0
) -> torch.Tensor:
    """CAT weights w(d, j) = prod_{t=j-d+1}^{j} p_t for each entry, 0 on ignored labels.

    ``token_logprob[t]`` = log P_target(x_t | x_<t) (entry 0 unused). The
    entry at (d, j) predicts x_{j+1} from x_0..x_{j-d}; it is only reached if
    the target would also have produced x_{j-d+1}..x_j. Constants: no grad.
    ``power`` < 1 (option ``cat_weight_power``, not the method's rule) tempers
    them to (prod p)^power: on greedy data a chain is reached when the drafter
    agrees with the target's argmax, which happens more often than p says.
    """
    logp = token_logprob.detach().to(torch.float64).clone()
    logp[0] = 0.0
    prefix = torch.cumsum(logp, 0)  # prefix[t] = sum_{s=1}^{t} log p_s
    hi = layout.position.clamp(max=logp.numel() - 1)
    lo = (layout.position - layout.depth).clamp(min=0, max=logp.numel() - 1)
    weights = torch.exp(power * (prefix[hi] - prefix[lo]))
    weights = torch.where(layout.depth == 0, torch.ones_like(weights), weights)
    return torch.where(labels != IGNORE_INDEX, weights, torch.zeros_like(weights)).to(torch.float32)


def equal_mass_per_depth(weights: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Option ``cat_depth_norm`` (not the method's rule): rescale the batch's weights so
    every depth block present carries the same total, keeping the CAT ratios within
    a depth. A weighted mean then equals the mean over depths of per-depth weighted
    means, so deep blocks still train on a target whose probabilities are low."""
    d = torch.where(valid, depth, torch.zeros_like(depth))
    w = torch.where(valid, weights, torch.zeros_like(weights)).double()
    sums = torch.bincount(depth[valid], weights=w[valid])
    present = sums > 0
    scale = torch.where(present, sums[present].sum() / present.sum() / sums.clamp_min(1e-300), torch.zeros_like(sums))
    return (w * scale[d]).to(weights.dtype)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, dtype-min elsewhere (works for eager and SDPA attention)."""
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))
