"""One model of a run and the features it reads, kept together.

A run holds a list of these (teacher, student, baseline today; a second teacher is one more record
with role "teacher"), so nothing passes parallel dicts of modules and feature names keyed by role.

    >>> teacher = Member("teacher", "teacher", module, ["user", "item", "dwell"])   # doctest: +SKIP
    >>> teacher.module(batch.select(teacher.features))                              # (B,) logits
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Member:
    name: str  # "teacher", "student", "baseline": its weights file, its key in metrics.json, its log lines
    role: str  # "teacher" or "student": the config section it is built from (the baseline is a student)
    module: nn.Module
    features: list[str]  # what it reads; a student's are serving features only

    def parameters_count(self) -> int:
        """Parameters, each once (a table shared with another model counts here too)."""
        return sum(p.numel() for p in {id(p): p for p in self.module.parameters()}.values())
