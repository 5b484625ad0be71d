"""Fit encoders on the training split and turn any split into `Encoded` tensors."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from distill.config import Config
from distill.data.batch import Encoded
from distill.data.encoders import FeatureEncoder, LabelEncoder, _numbers
from distill.data.io import read_table
from distill.errors import DistillError


def _each(fn, items: list) -> list:
    """fn over items on a few threads (Arrow compute and numpy release the GIL: columns encode in
    parallel); results in order, and the first item's error is raised as if it ran alone."""
    items = list(items)
    workers = min(len(items), torch.get_num_threads())
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


@dataclass
class Encoders:
    features: dict[str, FeatureEncoder]
    label: LabelEncoder

    @classmethod
    def fit(cls, cfg: Config, table: pa.Table, where: str) -> "Encoders":
        _require(table, [f.name for f in cfg.features] + [cfg.task.label], where)
        fitted = _each(lambda f: FeatureEncoder.fit(f, table.column(f.name), where), cfg.features)
        feats = {f.name: enc for f, enc in zip(cfg.features, fitted)}
        return cls(feats, LabelEncoder.fit(cfg.task, table.column(cfg.task.label), where))

    def encode(self, cfg: Config, table: pa.Table, where: str, features: list[str] | None = None,
               label: bool = True, soft_label: str | None = None) -> Encoded:
        """Encode `features` (default: all in the schema) of `table`; extra columns are ignored."""
        names = features if features is not None else list(self.features)
        task = cfg.task
        needed = names + ([task.label] if label else []) + [c for c in (task.weight, task.group, soft_label) if c and label]
        _require(table, needed, where)
        out: dict[str, torch.Tensor] = {}
        missing: dict[str, int] = {}
        for n, (arr, filled) in zip(names, _each(lambda n: self.features[n].encode(table.column(n), where), names)):
            out[n] = torch.from_numpy(arr)
            if filled:
                missing[n] = filled
        enc = Encoded(out, missing=missing)
        if not label:
            return enc
        enc.y = torch.from_numpy(self.label.encode(table.column(task.label), task.label, where))
        if task.weight:
            w, bad = _numbers(table.column(task.weight), task.weight, where)
            if bad.any() or (w < 0).any():
                raise DistillError(f"{where}: weight column '{task.weight}' must be finite and non-negative")
            enc.weight = torch.from_numpy(w.astype(np.float32))
        if task.group:
            groups = pc.dictionary_encode(pc.cast(table.column(task.group), pa.string())).combine_chunks()
            enc.group = np.asarray(pc.fill_null(groups.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        if soft_label:
            enc.soft = torch.from_numpy(self._soft_logits(table.column(soft_label), soft_label, where))
        return enc

    def _soft_logits(self, col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
        """An offline teacher score in the form the distillation loss takes (logits)."""
        task = self.label.task
        if task == "multiclass":
            try:
                probs = np.asarray(col.to_pylist(), dtype=np.float64)
            except (TypeError, ValueError):
                probs = np.zeros((0,))
            k = self.label.out_dim
            if probs.ndim != 2 or probs.shape[1] != k or not np.isfinite(probs).all() or (probs < 0).any():
                raise DistillError(f"{where}: soft label '{name}' must hold a list of {k} class probabilities per row")
            return np.log(np.clip(probs / probs.sum(1, keepdims=True), 1e-7, 1.0)).astype(np.float32)  # (N, C)
        p, bad = _numbers(col, name, where)
        if bad.any():
            raise DistillError(f"{where}: soft label '{name}' has {int(bad.sum())} missing or non-finite value(s)")
        if task == "regression":
            return ((p - self.label.mean) / self.label.std).astype(np.float32)
        if ((p < 0) | (p > 1)).any():
            raise DistillError(f"{where}: soft label '{name}' must be a probability in [0, 1] for a binary task")
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"features": [e.to_dict() for e in self.features.values()], "label": self.label.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Encoders":
        feats = [FeatureEncoder.from_dict(f) for f in d["features"]]
        return cls({f.name: f for f in feats}, LabelEncoder.from_dict(d["label"]))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> "Encoders":
        return cls.from_dict(json.loads(path.read_text()))


def _require(table: pa.Table, columns: list[str], where: str) -> None:
    have = set(table.column_names)
    for c in columns:
        if c not in have:
            raise DistillError(f"{where}: missing column '{c}'")


@dataclass
class Splits:
    encoders: Encoders
    train: Encoded | None  # None when the training split is streamed (data.streaming)
    valid: Encoded | None
    test: Encoded | None
    train_missing: dict[str, int] | None = None  # filled values in train, per feature


def load_splits(cfg: Config, encoders: Encoders | None = None) -> Splits:
    """Read and encode train / valid / test; encoders are fitted on train only (or given, e.g. a
    trained teacher's, so its inputs mean what they meant when it learned). With data.streaming the
    training split is only scanned to fit the encoders; valid and test are held in memory."""
    soft = cfg.distillation.soft_label if cfg.distillation.mode == "offline" else None
    if cfg.data.streaming:
        from distill.data.stream import fit_streaming
        fitted, missing = fit_streaming(cfg)
        encoders = encoders or fitted
        train = None
    else:
        train_t = read_table(cfg.data.train, cfg.data.format)
        encoders = encoders or Encoders.fit(cfg, train_t, cfg.data.train)
        train = encoders.encode(cfg, train_t, cfg.data.train, soft_label=soft)
        missing = train.missing
        del train_t
    parts: dict[str, Encoded | None] = {}
    for split in ("valid", "test"):
        spec = getattr(cfg.data, split)
        parts[split] = encoders.encode(cfg, read_table(spec, cfg.data.format), spec) if spec else None
    if cfg.data.streaming and not (parts["valid"] or parts["test"]):
        raise DistillError("data.streaming: give a valid or test split to measure the models on")
    return Splits(encoders, train, parts["valid"], parts["test"], missing)
