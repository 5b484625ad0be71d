"""Several teachers, one soft label: how their logits are combined (README, "Several teachers").

    mean     z = (1/K) Σ_k z_k                          the logits averaged
    weights  z = Σ_k w_k z_k / Σ_k w_k                  fixed weights by teacher name
    gate     z = Σ_k g_k(z_1..z_K) z_k,  g = softmax(MLP([z_1..z_K]))   a learned weight per row

The gate (Zhu et al., "Ensembled CTR Prediction via Knowledge Distillation", CIKM 2020) reads the
teachers' logits, not the features: the same gate then works in sync (trained jointly) and in async
(trained on the cached logits), and it needs no embedding of its own. It is trained on the hard
labels only (BCE / CE / MSE of the gated logit, the teachers' logits detached), so it learns which
teacher to trust for which row and never moves a teacher. It is saved as gate.safetensors beside
the teachers; the student and its export never hold it.

    >>> z = torch.tensor([[1.0, 3.0], [0.0, -1.0]])             # (K=2 teachers, B=2 rows)
    >>> combine(z, torch.tensor([0.5, 0.5]))
    tensor([ 0.5000,  1.0000])
"""
from __future__ import annotations

import torch
from torch import nn

from distill.member import Member


def combine(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """logits (K, B) or (K, B, C); weights (K,) fixed or (B, K) per row -> (B,) or (B, C)."""
    if weights.dim() == 1:
        w = weights.view(-1, *([1] * (logits.dim() - 1)))  # (K, 1[, 1])
    else:
        w = weights.t().reshape(weights.shape[1], weights.shape[0], *([1] * (logits.dim() - 2)))  # (K, B[, 1])
    return (w * logits).sum(0)


class Gate(nn.Module):
    """Per-row softmax weights over K teachers from their logits: (K, B[, C]) -> (B, K)."""

    def __init__(self, teachers: int, out_dim: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(teachers * out_dim, hidden), nn.ReLU(), nn.Linear(hidden, teachers))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = logits.permute(1, 0, *range(2, logits.dim())).reshape(logits.shape[1], -1)  # (B, K·C)
        return torch.softmax(self.net(x), dim=-1)


class Ensemble(nn.Module):
    """The teachers as one model: forward(batch) -> the combined logits, for evaluation and caching.

    `features` is the union of the teachers' features; each teacher reads its own."""

    def __init__(self, teachers: list[Member], weights: torch.Tensor | None = None, gate: Gate | None = None):
        super().__init__()
        self.names = [t.name for t in teachers]
        self.teachers = nn.ModuleList([t.module for t in teachers])
        self.reads = [t.features for t in teachers]
        self.gate = gate
        self.register_buffer("weights", weights if weights is not None else torch.full((len(teachers),), 1.0 / len(teachers)))

    def member_logits(self, batch) -> torch.Tensor:
        return torch.stack([m(batch.select(f)).float() for m, f in zip(self.teachers, self.reads)])  # (K, B[, C])

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """The combined logit of stacked teacher logits (K, B[, C])."""
        return combine(logits, self.gate(logits) if self.gate is not None else self.weights)

    def forward(self, batch) -> torch.Tensor:
        return self.mix(self.member_logits(batch))


def fixed_weights(cfg, names: list[str]) -> torch.Tensor:
    """(K,) weights summing to 1: equal for `mean`, distillation.ensemble.weights (by teacher name) for `weights`."""
    e = cfg.distillation.ensemble
    if e.type != "weights":
        return torch.full((len(names),), 1.0 / len(names))
    w = torch.tensor([float(e.weights[n.removeprefix("teacher:")]) for n in names])
    return w / w.sum()


def union(features: list[list[str]], order: list[str]) -> list[str]:
    seen = {n for f in features for n in f}
    return [n for n in order if n in seen]
