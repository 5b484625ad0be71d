"""The reference: a plain hand-written PyTorch loop on tensors already in memory (issue 5's yardstick).

This is what a practitioner writes without a library: one nn.Embedding per categorical feature,
numeric features concatenated, an MLP, Adam, random batches by index. Teacher and student each own
their tables (no sharing). Used side by side with distill in benchmarks/speed.py.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


class HandModel(nn.Module):
    def __init__(self, n_cat: int, vocab: int, n_num: int, dim: int, hidden: list[int]):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(vocab, dim) for _ in range(n_cat))
        layers: list[nn.Module] = []
        d = n_cat * dim + n_num
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        x = torch.cat([e(cat[:, i]) for i, e in enumerate(self.emb)] + [num], dim=1)
        return self.mlp(x).squeeze(-1)


def hand_train(kind: str, cat: torch.Tensor, num: torch.Tensor, pcat: torch.Tensor, pnum: torch.Tensor,
               y: torch.Tensor, vocab: int, batch_size: int = 4096, steps: int | None = None, seed: int = 0,
               lam: float = 0.5, bf16: bool = False) -> float:
    """Train for one epoch (or `steps` steps); returns samples per second. kind: student|teacher|sync.
    bf16: forward passes under torch.autocast(bfloat16), losses in float32 (what distill's
    train.precision: bf16 does), for a like-for-like reading of that lever."""
    torch.manual_seed(seed)
    n_cat, n_num = cat.shape[1], num.shape[1]
    student = HandModel(n_cat, vocab, n_num, 16, [256, 128])
    teacher = HandModel(n_cat + pcat.shape[1], vocab, n_num + pnum.shape[1], 16, [512, 256, 128])
    models = {"student": [student], "teacher": [teacher], "sync": [teacher, student]}[kind]
    opt = torch.optim.Adam([p for m in models for p in m.parameters()], lr=1e-3)
    n = len(y)
    order = torch.randperm(n)
    total = steps or (n // batch_size)
    t0 = time.perf_counter()
    for s in range(total):
        idx = order[(s * batch_size) % n:(s * batch_size) % n + batch_size]
        c, x, yb = cat[idx], num[idx], y[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            zs = student(c, x).float() if kind != "teacher" else None
            zt = teacher(torch.cat([c, pcat[idx]], 1), torch.cat([x, pnum[idx]], 1)).float() if kind != "student" else None
        if kind == "student":
            loss = F.binary_cross_entropy_with_logits(zs, yb)
        elif kind == "teacher":
            loss = F.binary_cross_entropy_with_logits(zt, yb)
        else:
            loss = (F.binary_cross_entropy_with_logits(zt, yb)
                    + (1 - lam) * F.binary_cross_entropy_with_logits(zs, yb)
                    + lam * F.binary_cross_entropy_with_logits(zs, torch.sigmoid(zt.detach())))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return total * batch_size / (time.perf_counter() - t0)
