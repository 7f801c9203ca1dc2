"""Loss terms of the three objectives, on flat rows of (logits, label, weight).

- ``ar`` and ``pard``: token-mean cross-entropy.
- ``pard2``: ce_alpha · CE_w + kd_alpha · KD_w, both CAT-weighted means
  (sum w·term / sum w), KD = T² · KL(p_target ‖ q_draft) at temperature T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows (rows are already the valid ones)."""
    return F.cross_entropy(logits.float(), labels)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w · v) / sum(w); 0 if every weight is 0 (keeps the graph)."""
    total = weights.sum()
    return (weights * values).sum() / total.clamp_min(torch.finfo(values.dtype).tiny)


def kd_per_row(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) per row."""
    t_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return kl * temperature**2


def pard2_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    ce_alpha: float,
    kd_alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PARD-2 loss on valid rows; returns (loss, parts for logging)."""
    ce = F.cross_entropy(student_logits.float(), labels, reduction="none")
    ce_w = weighted_mean(ce, weights)
    kd_w = weighted_mean(kd_per_row(student_logits, teacher_logits, temperature), weights)
    loss = ce_alpha * ce_w + kd_alpha * kd_w
    return loss, {"ce_w": float(ce_w.detach()), "kd_w": float(kd_w.detach())}
