"""Losses for learning from labels and from a teacher: prior-corrected cross-entropy and distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Classes a node never saw get this log-prior instead of -inf, so the loss stays finite; at
# e^-12 their softmax share is ~6e-6 and their logits get essentially no gradient from labels.
MIN_LOG_PRIOR = -12.0


def log_prior(label_counts: torch.Tensor) -> torch.Tensor:
    """(C,) counts -> (C,) log of the label distribution, floored at MIN_LOG_PRIOR."""
    p = label_counts.float() / label_counts.sum().clamp(min=1)
    return torch.log(p).clamp(min=MIN_LOG_PRIOR)


def balanced_cross_entropy(logits: torch.Tensor, y: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `logits + log prior` (balanced softmax, Ren et al. 2020).

    The model's raw logits then estimate the class posterior under a *uniform* prior: training on
    a skewed label mix no longer pushes down classes the node has never seen, so those logits are
    left to distillation instead of being fought by every local step.
    """
    return F.cross_entropy(logits + log_p, y)


def distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student_T) · T², averaged over rows. teacher_probs: (B, C), rows sum to one."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    if temperature != 1.0:
        teacher_probs = F.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=-1)
    return F.kl_div(log_q, teacher_probs, reduction="batchmean") * temperature**2
