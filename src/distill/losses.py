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


# ----------------------------------------------------------------------------- within-group (ranking) terms
#
# A batch is flat: row i has a score and a group id (a request, a session, a user). Rows with a
# negative group id (no group: a null in the group column) take part in no pair and no list. Only the
# order *within* a group is transferred; scores of different groups are never compared.


def _pair_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (i, j), i < j, of rows in the same group: two (P,) index tensors. Built from a
    (B, B) mask, so memory is O(B²): fine for batches of a few thousand rows."""
    g = group_ids.reshape(-1)
    same = (g[:, None] == g[None, :]) & (g[:, None] >= 0)
    i, j = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    return i, j


def _pair_hash(a: torch.Tensor, b: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random int64 key per pair of row numbers (a splitmix-style mix; int64 products wrap),
    computed where the rows are: sampling pairs by it needs no generator and no host read."""
    x = a * 1_000_003 + b * 7919 + seed * 2_654_435_761
    for _ in range(2):
        x = (x ^ (x >> 31)) * 0x5851F42D4C957F2D
    return x ^ (x >> 29)


def pairwise_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, group_ids: torch.Tensor,
                          T: float = 1.0, max_pairs: int | None = None,
                          generator: torch.Generator | None = None, row_ids: torch.Tensor | None = None,
                          seed: int = 0) -> torch.Tensor:
    """RankNet-style distillation: for each pair (i, j) of one group, the cross-entropy of
    σ((s_i − s_j)/T) against the teacher's preference σ((t_i − t_j)/T), times T², averaged over
    the pairs of the batch (all of them, or `max_pairs` drawn uniformly without replacement with
    `generator`, or, given `row_ids` (each row's number in the split), the `max_pairs` of smallest
    hash of (row numbers, `seed`): the same rows draw the same pairs on any device). A tie in the
    teacher gives the target 1/2; a batch without pairs gives 0.

    >>> s, t, g = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    >>> round(pairwise_distill_loss(s, t, g).item(), 4)   # BCE(σ(1)=0.7311, σ(0)) = log 2
    0.6931
    """
    s, t = student_logits.reshape(-1), teacher_logits.detach().reshape(-1)  # stop-gradient: the student only
    i, j = _pair_index(group_ids.to(s.device))
    if max_pairs is not None and len(i) > max_pairs:
        if row_ids is not None:
            r = row_ids.reshape(-1).to(i.device)
            pick = torch.argsort(_pair_hash(r[i], r[j], seed))[:max_pairs]
        else:
            pick = torch.randperm(len(i), generator=generator)[:max_pairs].to(i.device)
        i, j = i[pick], j[pick]
    if len(i) == 0:
        return s.sum() * 0.0  # no pair: zero, and still a graph for backward
    target = torch.sigmoid((t[i] - t[j]) / T)  # (P,)
    per = F.binary_cross_entropy_with_logits((s[i] - s[j]) / T, target, reduction="none") * T * T
    return per.mean()


def _segment_log_softmax(x: torch.Tensor, gid: torch.Tensor, n_groups: int) -> torch.Tensor:
    """log softmax of x within each segment gid ∈ [0, n_groups): scatter ops, no loop over groups."""
    top = torch.full((n_groups,), float("-inf"), dtype=x.dtype, device=x.device)
    top = top.scatter_reduce(0, gid, x.detach(), reduce="amax")  # the max only steadies exp
    shifted = x - top[gid]
    total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, gid, shifted.exp())
    return shifted - total.log()[gid]


def listwise_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, group_ids: torch.Tensor,
                          T: float = 1.0) -> torch.Tensor:
    """ListNet-style distillation: per group, the cross-entropy between the teacher's and the
    student's softmax over the group's rows at temperature T, times T², averaged over the groups of
    two rows or more (a group of one has nothing to order and does not count).

    >>> s, t, g = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0, 0])
    >>> round(listwise_distill_loss(s, t, g).item(), 4)   # −Σ ½·log ½ = log 2
    0.6931
    """
    s, t = student_logits.reshape(-1), teacher_logits.detach().reshape(-1)  # stop-gradient: the student only
    keep = group_ids.reshape(-1).to(s.device) >= 0
    s, t = s[keep], t[keep]
    if len(s) == 0:
        return student_logits.sum() * 0.0
    _, gid = torch.unique(group_ids.reshape(-1).to(s.device)[keep], return_inverse=True)
    n_groups = len(s)  # an upper bound, read from the shape (no host read); unused segments stay empty
    size = torch.zeros(n_groups, dtype=torch.int64, device=s.device).index_add(0, gid, torch.ones_like(gid))  # (G,)
    p_t = _segment_log_softmax(t / T, gid, n_groups).exp()  # (B,)
    per_row = -(p_t * _segment_log_softmax(s / T, gid, n_groups)) * T * T
    per_group = torch.zeros(n_groups, dtype=s.dtype, device=s.device).index_add(0, gid, per_row)
    lists = size > 1
    # no group of two rows: 0 (and a graph for backward), chosen on the device rather than by a read
    return torch.where(lists.any(), per_group[lists].mean(), student_logits.sum() * 0.0)


RANKING_TERMS = ("pointwise", "pairwise", "listwise")


def mixed_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task: str, group_ids: torch.Tensor,
                       weights: dict[str, float], temperature: float = 1.0, weight: torch.Tensor | None = None,
                       max_pairs: int | None = None, generator: torch.Generator | None = None,
                       row_ids: torch.Tensor | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """L_d = Σ_k w_k · L_k over the terms of `weights` (distillation.loss_weights), each term also
    returned by name ("L_pointwise", "L_pairwise", "L_listwise") so the loop logs it. Row weights
    apply to the pointwise term only."""
    parts: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if name == "pointwise":
            parts["L_pointwise"] = distill_loss(student_logits, teacher_logits, task, temperature, weight)
        elif name == "pairwise":
            parts["L_pairwise"] = pairwise_distill_loss(student_logits, teacher_logits, group_ids, temperature,
                                                        max_pairs, generator, row_ids, seed)
        else:
            parts["L_listwise"] = listwise_distill_loss(student_logits, teacher_logits, group_ids, temperature)
    total = sum(w * parts[f"L_{name}"] for name, w in weights.items())
    return {"L_d": total, **parts}
