"""λ schedules: the weight of the distillation term at a given optimizer step (0-based).

- constant: λ from the first step.
- delayed:  0 for the first k steps, then λ (the PFD paper: an untrained teacher misleads early).
- linear:   λ · min(1, step / k), a ramp from 0.
- cosine:   λ · (1 − cos(π · min(1, step / k))) / 2, a smooth ramp from 0.

    >>> lam("delayed", 5, weight=0.5, steps=10), lam("delayed", 10, weight=0.5, steps=10)
    (0.0, 0.5)
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "delayed", "linear", "cosine")


def lam(kind: str, step: int, weight: float, steps: int) -> float:
    if kind == "constant":
        return weight
    if kind == "delayed":
        return 0.0 if step < steps else weight
    frac = 1.0 if steps <= 0 else min(1.0, step / steps)
    if kind == "linear":
        return weight * frac
    if kind == "cosine":
        return weight * (1.0 - math.cos(math.pi * frac)) / 2.0
    raise ValueError(f"unknown schedule '{kind}'; choose one of {', '.join(SCHEDULES)}")
