"""Resumable training checkpoints: everything needed to continue a run bit-identically.

A checkpoint holds every model's weights, the phases already finished (with their summaries) and
the phase in progress: its step, epoch and batch position, optimizer state, early-stopping state and
the RNG state. It is written atomically (temporary file, fsync, rename) with a SHA-256 of its bytes
beside it; a truncated or corrupt file is detected on load and the previous good one is used. The
last `keep` checkpoints are kept.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.errors import DistillError


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Checkpoints:
    def __init__(self, directory: Path, every: int | None, models: dict[str, nn.Module], keep: int = 2,
                 write: bool = True):
        self.directory, self.every, self.models, self.keep = directory, every, models, keep
        self.write = write  # False on ranks other than 0 under torchrun: one writer per run
        self.completed: dict[str, Any] = {}  # phase -> its summary
        self.resume: dict[str, Any] | None = None  # the phase in progress when the run stopped
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ writing
    def maybe_save(self, phase: str, step: int, current: Callable[[], dict[str, Any]]) -> None:
        """Called by a loop after each step; saves every `every` steps."""
        if self.every and step % self.every == 0:
            self.save({"phase": phase, "step": step, **current()})

    def finish(self, phase: str, summary: dict[str, Any]) -> None:
        self.completed[phase] = summary
        if self.every:
            self.save(None)

    def save(self, current: dict[str, Any] | None) -> None:
        if not self.write:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {"models": {r: m.state_dict() for r, m in self.models.items()},
                 "completed": self.completed, "current": current}
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        existing = self.files()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.directory / f"ckpt-{number:06d}.pt"
        atomic_write(path, data)
        atomic_write(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
        for old in self.files()[:-self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".sha256").unlink(missing_ok=True)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("ckpt-*.pt")) if self.directory.is_dir() else []

    # ------------------------------------------------------------------ reading
    def load_latest(self) -> bool:
        """Load the newest good checkpoint into the models; False when there is none."""
        for path in reversed(self.files()):
            state = self._read(path)
            if state is None:
                continue
            for role, sd in state["models"].items():
                if role in self.models:
                    self.models[role].load_state_dict(sd)
            self.completed, self.resume = state["completed"], state["current"]
            return True
        return False

    def _read(self, path: Path) -> dict[str, Any] | None:
        data = path.read_bytes()
        digest = path.with_suffix(".sha256")
        if not digest.is_file() or digest.read_text().strip() != hashlib.sha256(data).hexdigest():
            self.warnings.append(f"{path}: checkpoint is truncated or corrupt (checksum mismatch); using the previous one")
            return None
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:  # a file that passes the checksum but does not unpickle: not ours
            self.warnings.append(f"{path}: cannot read the checkpoint ({type(e).__name__}); using the previous one")
            return None

    def resume_for(self, phase: str) -> dict[str, Any] | None:
        if self.resume is not None and self.resume["phase"] == phase:
            return self.resume
        return None


def require_good(ckpt: Checkpoints, where: Path) -> None:
    if not ckpt.load_latest():
        detail = "; ".join(ckpt.warnings) if ckpt.warnings else "no checkpoint files"
        raise DistillError(f"{where}: nothing to resume from ({detail})")
