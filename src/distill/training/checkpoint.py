"""Resumable training checkpoints: everything needed to continue a run bit-identically.

A checkpoint holds every model's weights, the phases already finished (with their summaries) and
the phase in progress: its step, epoch and batch position, optimizer state, early-stopping state and
the RNG state. It is written atomically (temporary file, fsync, rename) with a SHA-256 of its bytes
beside it; a truncated or corrupt file is detected on load and the previous good one is used. The
last `keep` checkpoints are kept.

Each checkpoint also holds a fingerprint of the data it was trained on (the fitted encoders and
the bytes of every data file, `data_fingerprint`): a resume on other data is refused with what
changed named, never continued silently or ended in a state-dict traceback. Before a checkpoint is
written the run's logs are flushed (`on_save`), so every step logged before it survives a kill.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill import device as devices
from distill.errors import DistillError


class CheckpointError(DistillError):
    """A checkpoint problem whose message already says what to do next (no '--resume' hint added):
    a checkpoint of other data or models, or a finished run that could not be written."""


def disk_full(e: BaseException) -> bool:
    """ENOSPC, as an OSError or inside a writer's own exception (safetensors says 'os error 28')."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


def write_failed(path: Path, e: BaseException) -> DistillError:
    """One line for a write that failed on the disk (full, read-only, gone)."""
    if disk_full(e):
        return DistillError(f"{path}: no space left on device")
    return DistillError(f"{path}: cannot write ({getattr(e, 'strerror', None) or e})")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all; a failed write leaves no temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temporary must not sit there filling the disk
        raise
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def data_fingerprint(files: dict[str, list[Path]], encoders: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint was trained on: {"files": {path: {split, size, sha256}}, "encoders":
    {"feature 'x'" | "label": {key: sha256}}}. Every file's bytes are hashed, a one-off at start
    (~1.4 s per GB on a shared 2-core box): flipped labels can leave a file's size as it was, and a
    copy can keep its mtime.

    >>> data_fingerprint({"train": [Path("train.parquet")]}, encoders.to_dict())  # doctest: +SKIP
    """
    out: dict[str, Any] = {"files": {}, "encoders": {}}
    for split, paths in files.items():
        for p in paths:
            out["files"][str(p)] = {"split": split, "size": p.stat().st_size, "sha256": _sha256_file(p)}
    for f in encoders["features"]:
        out["encoders"][f"feature '{f['name']}'"] = {k: _sha256_json(v) for k, v in f.items()}
    out["encoders"]["label"] = {k: _sha256_json(v) for k, v in encoders["label"].items()}
    return out


def fingerprint_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words ([] when nothing does)."""
    changes = []
    old, new = saved.get("files", {}), now.get("files", {})
    for path in list(dict.fromkeys([*old, *new])):
        split = (new.get(path) or old[path])["split"]
        what = "training data" if split == "train" else f"{split} data"
        if path not in new:
            changes.append(f"the {what} changed since the checkpoint: {Path(path).name} is no longer part of it")
        elif path not in old:
            changes.append(f"the {what} changed since the checkpoint: {Path(path).name} was added")
        elif old[path] != new[path]:
            changes.append(f"the {what} changed since the checkpoint: {Path(path).name} differs")
    old, new = saved.get("encoders", {}), now.get("encoders", {})
    for name in list(dict.fromkeys([*old, *new])):
        if name not in old or name not in new:
            changes.append(f"the fitted encoders differ: {name} is {'new' if name not in old else 'gone'}")
            continue
        keys = [k for k in dict.fromkeys([*old[name], *new[name]]) if old[name].get(k) != new[name].get(k)]
        if keys:
            changes.append(f"the fitted encoders differ: {name} {', '.join(keys)}")
    return changes


class Checkpoints:
    def __init__(self, directory: Path, every: int | None, models: dict[str, nn.Module], keep: int = 2,
                 write: bool = True, fingerprint: dict[str, Any] | None = None,
                 on_save: Callable[[], None] | None = None):
        self.directory, self.every, self.models, self.keep = directory, every, models, keep
        self.write = write  # False on ranks other than 0 under torchrun: one writer per run
        self.fingerprint = fingerprint  # the data this run trains on (data_fingerprint)
        self.on_save = on_save  # flushes the logs: what they hold must reach the checkpoint's step
        self.logged_until: float | None = None  # the loaded checkpoint's time: later log events replay
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
        existing = self.files()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.directory / f"ckpt-{number:06d}.pt"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Logs first: a kill after this line finds every step before the checkpoint on disk (and
            # the steps after it, trimmed on resume, are replayed); the other order would leave holes.
            logged_until = time.time()
            if self.on_save is not None:
                self.on_save()
            # The RNG goes in even between phases: the next phase's dropout masks must replay too.
            state = {"models": {r: m.state_dict() for r, m in self.models.items()},
                     "completed": self.completed, "current": current, "rng": devices.rng_state(),
                     "fingerprint": self.fingerprint, "logged_until": logged_until}
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
            atomic_write(path, data)
            try:
                atomic_write(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
            except BaseException:
                path.unlink(missing_ok=True)  # without its checksum it would only be skipped as corrupt
                raise
        except OSError as e:  # the disk is full: the previous checkpoints are intact, say so in one line
            raise write_failed(path, e) from None
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
            saved = state.get("fingerprint")
            if saved is not None and self.fingerprint is not None:
                changes = fingerprint_changes(saved, self.fingerprint)
                if changes:
                    raise CheckpointError(f"{path}: {'; '.join(changes)}; resume with the data it was trained on, "
                                        "or start afresh with --overwrite")
            for role, sd in state["models"].items():
                if role in self.models:
                    try:
                        self.models[role].load_state_dict(sd)
                    except RuntimeError as e:  # shapes differ: another vocabulary, model or feature set
                        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing" in ln
                                      or "Unexpected" in ln), str(e).splitlines()[0])
                        raise CheckpointError(f"{path}: the {role} in the checkpoint does not fit the {role} built "
                                            f"from this config and data ({first.rstrip('.')})") from None
            self.completed, self.resume = state["completed"], state["current"]
            self.logged_until = state.get("logged_until")
            if self.resume is None and "rng" in state:  # stopped between phases (mid-phase: the loop restores it)
                devices.set_rng_state(state["rng"])
            return True
        return False

    def _read(self, path: Path) -> dict[str, Any] | None:
        data = path.read_bytes()
        digest = path.with_suffix(".sha256")
        if not digest.is_file() or digest.read_text().strip() != hashlib.sha256(data).hexdigest():
            self.warnings.append(f"{path}: checkpoint is truncated or corrupt (checksum mismatch); using the previous one")
            return None
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")  # a GPU run resumes anywhere
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
