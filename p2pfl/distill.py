"""Losses for learning from labels and from a teacher: prior-corrected cross-entropy and distillation."""

from __future__ import annotations

import math

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
    log_q, teacher_probs = _tempered(student_logits, teacher_probs, temperature)
    return F.kl_div(log_q, teacher_probs, reduction="batchmean") * temperature**2


def _tempered(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's log-probabilities and the teacher's probabilities, both at `temperature`."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    if temperature != 1.0:
        teacher_probs = F.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=-1)
    return log_q, teacher_probs


def own_split_distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, known: torch.Tensor,
                           own_split: float, temperature: float = 1.0) -> torch.Tensor:
    """`distill_loss` with the teacher's split among the node's own classes (`known`, (C,) bool) weighed
    by `own_split`. By the chain rule KL(t || s) = KL over the coarse outcomes ("one of mine", each other
    class) + t(mine) x KL of the split among mine; this keeps the first whole and multiplies the second
    by `own_split`: 1 is plain distillation, 0 leaves the ranking among a node's own classes to its
    labels (the teacher still says how likely a row is to be one of them, and which other class)."""
    if own_split == 1.0 or not bool(known.any()):
        return distill_loss(student_logits, teacher_probs, temperature)
    log_q, teacher_probs = _tempered(student_logits, teacher_probs, temperature)
    t_mine = teacher_probs[:, known].sum(dim=-1)  # (B,)
    log_s_mine = torch.logsumexp(log_q[:, known], dim=-1)
    others = teacher_probs[:, ~known]
    coarse = (torch.special.xlogy(t_mine, t_mine) - t_mine * log_s_mine
              + (torch.special.xlogy(others, others) - others * log_q[:, ~known]).sum(dim=-1))
    t_split = teacher_probs[:, known] / t_mine.clamp_min(1e-12)[:, None]
    split = (torch.special.xlogy(t_split, t_split) - t_split * (log_q[:, known] - log_s_mine[:, None])).sum(dim=-1)
    return (coarse + own_split * t_mine * split).mean() * temperature**2


def outlier_loss(student_logits: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Outlier exposure that keeps what a node knows: KL from "uniform over the classes" to the student,
    with the classes the node has labels of (`known`, (C,) bool) pooled into one outcome.

    A reference row may be of one of the node's own classes, so uniform targets on every row
    (Hendrycks et al.'s outlier exposure) also flatten the node's ranking among its own classes: a node
    with a majority and a minority class loses the minority (its prior then names the majority). Pooled,
    the row only has to say how likely it is to be one of mine (|known| / C) and leave the split among
    them to the labels: the gradient inside the pool is proportional to the student's own split, so
    that ranking is not pushed at. Zero when the node knows every class (nothing is unknown to it)."""
    log_q = F.log_softmax(student_logits, dim=-1)
    c, k = student_logits.shape[-1], int(known.sum())
    if k == c:
        return student_logits.sum() * 0.0  # no outlier to expose; keeps the graph for backward
    if k == 0:
        return -(log_q.mean(dim=-1)).mean() - math.log(c)  # no labels at all: plain uniform targets
    mine = torch.logsumexp(log_q[:, known], dim=-1)  # (B,) log probability of "one of my classes"
    cross = -(k / c) * mine - log_q[:, ~known].sum(dim=-1) / c
    entropy = -(k / c) * math.log(k / c) + (c - k) / c * math.log(c)
    return (cross - entropy).mean()
