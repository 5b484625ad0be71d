"""Where tensors live and how the forward pass's precision is entered: the one seam a GPU changes.

This version trains on the CPU only, so `resolve` always answers the CPU and refuses anything else
with one line; the GPU issue fills it in (a CUDA device, its autocast dtype, pinned-memory copies).
Everything that places a tensor or opens an autocast region asks this module, so nothing else needs
to know which machine it runs on:

    >>> device = resolve()                                 # torch.device("cpu")
    >>> with autocast("bf16", device):                     # doctest: +SKIP
    ...     logits = model(batch.to(device))
"""
from __future__ import annotations

import contextlib

import torch

from distill.errors import DistillError

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")


def resolve(name: str | None = None) -> torch.device:
    """The device the models train on: the CPU (`name` None or "cpu") in this version."""
    if name in (None, "cpu"):
        return CPU
    raise DistillError(f"device '{name}': this version trains on the CPU only")


def autocast(precision: str, device: torch.device = CPU) -> contextlib.AbstractContextManager:
    """The forward passes' precision: float32, or bfloat16 matrix products under torch.autocast
    (train.precision: bf16). Callers take `.float()` of the logits, so losses stay float32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise DistillError(f"train.precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
