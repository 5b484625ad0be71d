"""Asynchronous distillation: the teacher first (or loaded and frozen), then the student.

The frozen teacher's logits on the training split are computed once, in eval mode, and reused in
every student epoch: the teacher does not change, so re-running it each step would only cost time.
"""
from __future__ import annotations

import time

from torch import nn

from distill.config import Config
from distill.data.batch import Encoded
from distill.data.encoders import LabelEncoder
from distill.training.common import RunLog, predict_logits
from distill.training.single import train_single


def train_async(cfg: Config, teacher: nn.Module, student: nn.Module, teacher_features: list[str],
                student_features: list[str], train: Encoded, valid: Encoded | None, label: LabelEncoder,
                log: RunLog, teacher_trained: bool = False) -> dict:
    summary: dict = {}
    if not teacher_trained:
        log.info("async: training the teacher")
        summary["teacher"] = train_single(cfg, teacher, teacher_features, train, valid, label, log, phase="teacher")
    teacher.eval()
    teacher.requires_grad_(False)
    t0 = time.perf_counter()
    soft = predict_logits(teacher, train, teacher_features)  # (N,) or (N, C), once
    summary["soft_label_seconds"] = time.perf_counter() - t0
    log.info("async: training the student on the frozen teacher's soft labels")
    summary["student"] = train_single(cfg, student, student_features, train, valid, label, log, phase="student", soft=soft)
    return summary
