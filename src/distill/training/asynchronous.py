"""Asynchronous distillation, second phase: the student against a frozen teacher.

The teacher was trained first (`single.py`, phase "teacher") or loaded from a checkpoint. It goes to
eval mode with gradients off, and its logits on the training split are computed once and reused in
every student epoch: the teacher does not change, so re-running it each step would only cost time.
"""
from __future__ import annotations

import time

from torch import nn

from distill.config import Config
from distill.data.batch import Encoded
from distill.data.encoders import LabelEncoder
from distill.data.loader import InMemoryLoader
from distill.training.checkpoint import Checkpoints
from distill.training.common import RunLog, autocast, predict_rows
from distill.training.single import train_single


def train_async_student(cfg: Config, teacher: nn.Module, student: nn.Module, teacher_features: list[str],
                        student_features: list[str], loader: InMemoryLoader, valid: Encoded | None,
                        label: LabelEncoder, log: RunLog, ckpt: Checkpoints | None = None) -> dict:
    teacher.eval()
    teacher.requires_grad_(False)
    t0 = time.perf_counter()
    # (N,) or (N, C), once. Under torchrun each rank predicts its slices and all ranks get every row.
    # The frozen teacher is never wrapped in DDP: it has nothing to learn, so nothing to reduce.
    cache = predict_rows(teacher, loader.narrowed(teacher_features), teacher_features, log=log,
                        precision=autocast(cfg))
    soft_seconds = time.perf_counter() - t0
    log.info(f"async: teacher soft labels cached in {soft_seconds:.2f}s; training the student")
    summary = train_single(cfg, student, student_features, loader.narrowed(student_features), valid, label, log, phase="student",
                           soft=lambda batch: cache.index_select(0, batch.index), ckpt=ckpt)
    return summary | {"soft_label_seconds": soft_seconds}
