"""Loss functions of tensors. The λ weighting lives in the training loops, where it is visible.

Conventions (one meaning per name; see the README's "Conventions" table):
- `weight` λ weights the distillation term: student loss = (1 − λ)·L_s + λ·L_d (the PFD paper's
  formula (3), Lopez-Paz et al.). tensor2tensor's `task_balance` is 1 − λ.
- binary: L_d is the binary cross-entropy of the student's logit against the teacher's probability
  (the PFD form). With a temperature T both logits are divided by T and the term is multiplied by
  T², as for multiclass, so T = 1 is exactly the PFD form.
- multiclass: L_d = T² · CE(softmax(z_t / T), log_softmax(z_s / T)) (Hinton et al., tensor2tensor).
  Cross-entropy, not KL: they differ by the teacher's entropy, a constant for the student.
- regression: L_d = MSE(z_s, z_t); the temperature does not apply.
- The teacher's logits are detached inside `distill_loss`: L_d never sends a gradient to the
  teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def hard_loss(logits: torch.Tensor, y: torch.Tensor, task: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L(y, f(x)): BCE on logits (binary), softmax CE (multiclass), MSE (regression)."""
    if task == "binary":
        per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B,)
    elif task == "multiclass":
        per = F.cross_entropy(logits, y, reduction="none")  # logits (B, C), y (B,)
    else:
        per = (logits - y).pow(2)
    return _mean(per, weight)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task: str,
                 temperature: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_d(f_t, f_s): how far the student is from the teacher's soft label.

    >>> s, t = torch.tensor([0.0]), torch.tensor([2.0])
    >>> round(distill_loss(s, t, "binary").item(), 4)   # BCE(p=σ(2)=0.8808, σ(0)) = log 2
    0.6931
    """
    teacher_logits = teacher_logits.detach()  # stop-gradient: L_d trains the student only
    T = temperature
    if task == "binary":
        target = torch.sigmoid(teacher_logits / T)
        per = F.binary_cross_entropy_with_logits(student_logits / T, target, reduction="none") * T * T
    elif task == "multiclass":
        target = F.softmax(teacher_logits / T, dim=-1)  # (B, C)
        per = -(target * F.log_softmax(student_logits / T, dim=-1)).sum(-1) * T * T
    else:
        per = (student_logits - teacher_logits).pow(2)
    return _mean(per, weight)
