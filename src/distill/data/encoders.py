"""Feature and label encoders, fitted on the training split and saved beside every checkpoint.

What each feature kind does (categorical, numeric, multi_categorical) is in distill.data.kinds, one
module per kind; here are the label encoder and `Encoders`, the set a run saves as encoders.json.
Fitting goes chunk by chunk (an in-memory split is one chunk, a streamed one a chunk per row
group), so both are fitted by the same code.

Whole columns are encoded at once with Arrow compute kernels: no per-row Python. Nothing here
imports torch except `Encoders.encode`, which makes the training tensors; serving encodes to numpy.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distill.config import Config, FeatureConfig, TaskConfig
from distill.data.kinds import KINDS, FeatureEncoder, feature_from_dict, fit_feature  # noqa: F401  (re-exported)
from distill.data.kinds.categorical import FIRST, OOV, PAD, CategoryIndex, _as_strings, _categories  # noqa: F401
from distill.data.kinds.multi_categorical import _bags  # noqa: F401
from distill.data.kinds.numeric import Moments, _numbers
from distill.data.kinds.sequence import check_sides
from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.data.batch import Encoded


# ----------------------------------------------------------------------------- labels


@dataclass
class LabelEncoder:
    """binary: 0/1; multiclass: class index (classes from the training split); regression: standardised."""

    task: str
    classes: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @property
    def out_dim(self) -> int:
        return len(self.classes) if self.task == "multiclass" else 1

    @classmethod
    def fit(cls, task: TaskConfig, col: pa.ChunkedArray, where: str) -> "LabelEncoder":
        fit = LabelFit(task)
        fit.add(col, where)
        return fit.result(where)

    def _regression_values(self, col: pa.ChunkedArray, label: str, where: str) -> np.ndarray:
        y, missing = _numbers(col, label, where)
        if missing.any():
            raise DistillError(f"{where}: label '{label}' has {int(missing.sum())} missing or non-finite value(s)")
        return y

    def encode(self, col: pa.ChunkedArray, label: str, where: str) -> np.ndarray:
        if col.null_count:
            raise DistillError(f"{where}: label '{label}' has {col.null_count} missing value(s)")
        if self.task == "binary":
            y, _ = _numbers(col, label, where)
            bad = ~np.isin(y, (0.0, 1.0))
            if bad.any():
                shown = ", ".join(str(v) for v in np.unique(y[bad])[:5])
                raise DistillError(f"{where}: label '{label}' must be 0 or 1 for a binary task; found {shown}")
            return y.astype(np.float32)
        if self.task == "multiclass":
            strings = _as_strings(col, label, where)
            idx = np.asarray(pc.fill_null(pc.index_in(strings, value_set=pa.array(self.classes, pa.string())), -1).to_numpy(zero_copy_only=False))
            if (idx < 0).any():
                unseen = sorted(set(np.asarray(strings.to_pylist(), dtype=object)[idx < 0]))[:5]
                raise DistillError(f"{where}: label '{label}' has class(es) not in the training split: {', '.join(map(str, unseen))}")
            return idx.astype(np.int64)
        y = self._regression_values(col, label, where)
        return ((y - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "classes": self.classes, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelEncoder":
        return cls(d["task"], list(d.get("classes", [])), d.get("mean", 0.0), d.get("std", 1.0))


class LabelFit:
    """The label encoder fitted chunk by chunk: the classes seen (multiclass), the moments (regression)."""

    def __init__(self, task: TaskConfig):
        self.task, self.enc = task, LabelEncoder(task.type)
        self.classes: set[str] = set()
        self.moments = Moments()

    def add(self, col: pa.ChunkedArray, where: str) -> None:
        if self.task.type == "multiclass":
            strings = _as_strings(col, self.task.label, where)
            self.classes.update(v for v in pc.unique(strings).to_pylist() if v is not None)
        elif self.task.type == "regression":
            self.moments.add(self.enc._regression_values(col, self.task.label, where))

    def result(self, where: str) -> LabelEncoder:
        enc = self.enc
        if self.task.type == "multiclass":
            enc.classes = sorted(self.classes)
            if len(enc.classes) < 2:
                raise DistillError(f"{where}: label '{self.task.label}' has {len(enc.classes)} class(es); multiclass needs at least 2")
        elif self.task.type == "regression":
            enc.mean, enc.std = float(self.moments.mean), self.moments.std or 1.0
        return enc


# ----------------------------------------------------------------------------- all of a run's encoders


def _each(fn, items: list, workers: int | None = None) -> list:
    """fn over items on a few threads (Arrow compute and numpy release the GIL: columns encode in
    parallel); results in order, and the first item's error is raised as if it ran alone."""
    items = list(items)
    workers = min(len(items), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


@dataclass
class Encoders:
    features: dict[str, FeatureEncoder]
    label: LabelEncoder

    @classmethod
    def fit(cls, cfg: Config, table: pa.Table, where: str, workers: int | None = None) -> "Encoders":
        _require(table, [f.name for f in cfg.features] + [cfg.task.label], where)
        return fit_encoders(cfg.features, cfg.task, [(table, where)], where, workers)[0]

    def encode_arrays(self, table: pa.Table, where: str, names: list[str] | None = None,
                      workers: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The features `names` (default all) of `table` as arrays in their kind's layout, and how
        many values of each were missing (filled). Extra columns are ignored."""
        names = names if names is not None else list(self.features)
        _require(table, names, where)
        arrays: dict[str, np.ndarray] = {}
        missing: dict[str, int] = {}
        for n, (arr, filled) in zip(names, _each(lambda n: self.features[n].encode(table.column(n), where), names, workers)):
            arrays[n] = arr
            if filled:
                missing[n] = filled
        check_sides(self.features, arrays, where)  # a sequence's side channels line up with it
        return arrays, missing

    def encode(self, cfg: Config, table: pa.Table, where: str, features: list[str] | None = None,
               label: bool = True, soft_label: str | None = None) -> "Encoded":
        """Encode `features` (default: all in the schema) of `table` as training tensors; extra
        columns are ignored."""
        import torch  # only here, where tensors are made: serving encodes with encode_arrays

        from distill.data.batch import Encoded
        names = features if features is not None else list(self.features)
        task = cfg.task
        needed = names + ([task.label] if label else []) + [c for c in (task.weight, task.group, soft_label) if c and label]
        _require(table, needed, where)
        arrays, missing = self.encode_arrays(table, where, names, workers=torch.get_num_threads())
        enc = Encoded({n: torch.from_numpy(a) for n, a in arrays.items()}, missing=missing)
        if not label:
            return enc
        enc.y = torch.from_numpy(self.label.encode(table.column(task.label), task.label, where))
        if task.weight:
            w, bad = _numbers(table.column(task.weight), task.weight, where)
            if bad.any() or (w < 0).any():
                raise DistillError(f"{where}: weight column '{task.weight}' must be finite and non-negative")
            enc.weight = torch.from_numpy(w.astype(np.float32))
        if task.group:
            enc.group = group_ids(table.column(task.group))
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
        feats = [feature_from_dict(f) for f in d["features"]]
        return cls({f.name: f for f in feats}, LabelEncoder.from_dict(d["label"]))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> "Encoders":
        return cls.from_dict(json.loads(path.read_text()))


def fit_encoders(features: list[FeatureConfig], task: TaskConfig, chunks: Iterable[tuple[pa.Table, str]], where: str,
                 workers: int | None = None) -> tuple[Encoders, dict[str, int]]:
    """Fit every feature's encoder and the label's over `chunks` of the training split, (table,
    where) pairs, in one pass; also count the filled values per feature. `where` names the split."""
    fits = {f.name: KINDS[f.type].fit(f) for f in features}
    label = LabelFit(task)
    for table, at in chunks:
        _each(lambda f: fits[f.name].add(table.column(f.name), at), features, workers)
        label.add(table.column(task.label), at)
    encoders = Encoders({n: fit.result() for n, fit in fits.items()}, label.result(where))
    for f in features:
        if getattr(f, "shares", None):  # a sequence in the id space of its candidate (data/kinds/sequence.py)
            encoders.features[f.name].index = encoders.features[f.shares].index
    return encoders, {n: fit.filled for n, fit in fits.items() if fit.filled}


def group_ids(column: pa.ChunkedArray) -> np.ndarray:
    """(N,) int64 ids of a group column's values (−1: missing), as task.group and distillation.group use them."""
    groups = pc.dictionary_encode(pc.cast(column, pa.string())).combine_chunks()
    return np.asarray(pc.fill_null(groups.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _require(table: pa.Table, columns: list[str], where: str) -> None:
    have = set(table.column_names)
    for c in columns:
        if c not in have:
            raise DistillError(f"{where}: missing column '{c}'")
