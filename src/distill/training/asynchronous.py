"""Asynchronous distillation, second phase: the student against a frozen teacher.

The teacher was trained first (single.py, phase "teacher") or loaded from a checkpoint. It goes to
eval mode with gradients off, and its logits on the training split are computed once and reused in
every student epoch: the teacher does not change, so re-running it each step would only cost time.
The student's step is single.py's with the cache as its soft labels:

    loss = (1 − λ)·L_s(y, f_s(x)) + λ·L_d(cache[rows], f_s(x))
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from distill.data.batch import Batch
from distill.member import Member
from distill.training.common import RunLog, predict_rows


def cache_logits(teacher: Member, loader, log: RunLog | None = None,
                 precision: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """The frozen teacher's logits on every training row, (N,) or (N, C), by row number.

    Under torchrun each rank predicts its slices and all ranks get every row. The frozen teacher
    is never wrapped in DDP: it has nothing to learn, so nothing to reduce."""
    teacher.module.eval()
    teacher.module.requires_grad_(False)
    return predict_rows(teacher.module, loader.narrowed(teacher.features), teacher.features, log=log,
                        precision=precision)


def from_cache(cache: torch.Tensor) -> Callable[[Batch], torch.Tensor]:
    """The soft labels of a batch: the cached teacher logits of its rows. A cache in host memory
    (too large for the GPU) normally rides with the batch instead (phases.fit_student, `with_soft`);
    read here, it costs one copy of the row numbers to the host per step."""
    def soft(batch: Batch) -> torch.Tensor:
        if cache.device != batch.index.device:
            return cache.index_select(0, batch.index.cpu()).to(batch.index.device)
        return cache.index_select(0, batch.index)
    return soft

