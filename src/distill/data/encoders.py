"""Feature and label encoders, fitted on the training split and saved beside every checkpoint.

Index conventions for categorical features (single and multi): 0 is padding (only multi-valued bags
use it), 1 is the out-of-vocabulary / missing bucket, 2.. are the vocabulary (or the hash buckets).
Numeric features become two columns: the standardised value and a missing flag (null, NaN and ±inf
are filled with the training mean, i.e. 0 after standardising, and flagged).

Whole columns are encoded at once with Arrow compute kernels: no per-row Python.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distill.config import FeatureConfig, TaskConfig
from distill.errors import DistillError

PAD, OOV, FIRST = 0, 1, 2


def _categories(col: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    """A categorical column as int64 (integers, and floats holding whole numbers) or as strings.

    Integers stay integers: casting millions of them to strings was most of the encoding time.
    Either way a category's identity is its string form ("3"), which the vocabulary stores.

    Floats: NaN and ±inf are missing values (null: the out-of-vocabulary bucket, counted with the
    nulls). A float column whose values are all whole numbers maps to the integer ids (3.0 is "3").
    Whole numbers of magnitude 2^53 or more are refused: a float cannot hold such an id exactly
    (2^53 + 1 is stored as 2^53), so distinct ids may already have merged in the file."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_floating(col.type):
        finite = pc.is_finite(col)
        if pc.any(pc.invert(finite)).as_py():
            col = pc.if_else(finite, col, None)
        col = _integral_floats(col, name, where)
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.int64())
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DistillError(f"{where}: column '{name}' of type {col.type} cannot be read as categories") from None


def _integral_floats(col: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    """A float column (NaN and inf already null) as int64 when every value is a whole number."""
    whole = pc.all(pc.equal(pc.floor(col), col)).as_py()
    if whole is False:
        return col  # 1.5 is a category too; its string form names it
    if whole is None:  # no value at all: nulls only
        return pc.cast(col, pa.int64())
    lo, hi = pc.min_max(col).values()
    if max(-lo.as_py(), hi.as_py()) >= 2.0 ** 53:
        big = pc.greater_equal(pc.abs(col), 2.0 ** 53)
        n_big = pc.sum(big).as_py()
        example = pc.filter(col, big)[0].as_py()
        raise DistillError(f"{where}: column '{name}' holds {n_big} float value(s) of magnitude 2^53 or more (e.g. {example:.17g}), "
                           f"which cannot be exact ids: store the ids as int64 or strings")
    return pc.cast(col, pa.int64())


def _as_strings(col: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    return pc.cast(_categories(col, name, where), pa.string())


def _stable_hash(values: list[str | None], buckets: int) -> np.ndarray:
    # crc32, not Python's hash(): it must give the same bucket in every process and release.
    return np.array([OOV if v is None else FIRST + zlib.crc32(v.encode()) % buckets for v in values], dtype=np.int64)


@dataclass
class CategoryIndex:
    """String → index, by vocabulary (fitted) or by hashing into a fixed number of buckets."""

    vocab: list[str] | None = None
    hash_buckets: int | None = None

    @property
    def size(self) -> int:
        return FIRST + (self.hash_buckets if self.hash_buckets else len(self.vocab or []))

    def fit(self, values: pa.ChunkedArray, min_count: int) -> "CategoryIndex":
        self._ints = None
        if self.hash_buckets is None:
            counts = pc.value_counts(values.drop_null() if values.null_count else values)
            vals, cnts = counts.field("values"), counts.field("counts")
            keep = pc.filter(vals, pc.greater_equal(cnts, min_count))
            if pa.types.is_integer(keep.type):
                # vectorised: the vocabulary is still ordered by string form, as for any column
                ints = keep.to_numpy(zero_copy_only=False).astype(np.int64)
                strs = ints.astype(str)
                order = np.argsort(strs, kind="stable")
                self.vocab = strs[order].tolist()
                self._ints = (pa.array(ints[order], pa.int64()), np.arange(len(order), dtype=np.int64))
            else:
                self.vocab = sorted(str(v) for v in keep.to_pylist() if v is not None)
        return self

    def _int_lookup(self) -> tuple[pa.Array, np.ndarray]:
        """The vocabulary entries that are integers (as int64) and their positions in it."""
        cached = getattr(self, "_ints", None)
        if cached is None:
            pos = [i for i, v in enumerate(self.vocab or []) if v.lstrip("-").isdigit() and str(int(v)) == v]
            cached = (pa.array([int(self.vocab[i]) for i in pos], pa.int64()), np.asarray(pos, dtype=np.int64))
            self._ints = cached
        return cached

    def encode(self, values: pa.ChunkedArray | pa.Array) -> np.ndarray:
        if self.hash_buckets:
            enc = pc.dictionary_encode(values)
            enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
            lut = _stable_hash([None if v is None else str(v) for v in enc.dictionary.to_pylist()], self.hash_buckets)
            idx = enc.indices.to_numpy(zero_copy_only=False)
            out = np.full(len(enc), OOV, dtype=np.int64)
            valid = ~np.asarray(enc.indices.is_null())
            out[valid] = lut[idx[valid].astype(np.int64)]
            return out
        if pa.types.is_integer(values.type):
            ints, positions = self._int_lookup()
            pos = np.asarray(pc.fill_null(pc.index_in(values, value_set=ints), -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            return np.where(pos >= 0, positions[np.maximum(pos, 0)] if len(positions) else 0, -1) + FIRST
        pos = pc.index_in(values, value_set=pa.array(self.vocab or [], pa.string()))
        return np.asarray(pc.fill_null(pos, -1).to_numpy(zero_copy_only=False), dtype=np.int64) + FIRST


@dataclass
class FeatureEncoder:
    """Encodes one feature column; `kind` is the feature type."""

    name: str
    kind: str
    index: CategoryIndex | None = None
    mean: float = 0.0
    std: float = 1.0
    max_len: int = 16
    separator: str = " "

    @classmethod
    def fit(cls, spec: FeatureConfig, col: pa.ChunkedArray, where: str) -> "FeatureEncoder":
        enc = cls(spec.name, spec.type, max_len=spec.max_len, separator=spec.separator)
        if spec.type == "numeric":
            x, _ = _numbers(col, spec.name, where)
            finite = x[np.isfinite(x)]
            if finite.size:
                enc.mean = float(finite.mean())
                enc.std = float(finite.std()) or 1.0
        elif spec.type == "categorical":
            enc.index = CategoryIndex(hash_buckets=spec.hash_buckets).fit(_categories(col, spec.name, where), spec.min_count)
        else:
            flat = pc.list_flatten(_bags(col, spec.name, where, spec.separator))
            enc.index = CategoryIndex(hash_buckets=spec.hash_buckets).fit(flat, spec.min_count)
        return enc

    @property
    def cardinality(self) -> int:
        return self.index.size if self.index else 0

    def encode(self, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, int]:
        """Returns the encoded array and how many values were missing (filled)."""
        if self.kind == "numeric":
            x, missing = _numbers(col, self.name, where)
            # clipped: a value 10^4 standard deviations out (or 1e308) would overflow float32 to inf
            value = np.clip(np.where(missing, 0.0, (np.nan_to_num(x) - self.mean) / self.std), -1e4, 1e4)
            return np.stack([value, missing], axis=1).astype(np.float32), int(missing.sum())  # (N, 2)
        assert self.index is not None
        if self.kind == "categorical":
            values = _categories(col, self.name, where)
            return self.index.encode(values), values.null_count
        bags = pa.chunked_array(_bags(col, self.name, where, self.separator).chunks).combine_chunks()
        lengths = np.asarray(pc.fill_null(pc.list_value_length(bags), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        flat = pc.list_flatten(bags)
        codes = self.index.encode(flat)
        codes[np.asarray(pc.fill_null(pc.equal(flat, ""), False))] = PAD  # "a  b" splits into an empty token
        width = int(min(self.max_len, max(1, lengths.max(initial=1))))
        out = np.zeros((len(lengths), width), dtype=np.int64)  # (N, L), PAD-filled
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pos = np.arange(codes.size) - np.repeat(starts, lengths)
        row = np.repeat(np.arange(len(lengths)), lengths)
        keep = pos < width
        out[row[keep], pos[keep]] = codes[keep]
        return out, int((lengths == 0).sum())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            d.update(mean=self.mean, std=self.std)
        else:
            assert self.index is not None
            d.update(vocab=self.index.vocab, hash_buckets=self.index.hash_buckets)
            if self.kind == "multi_categorical":
                d.update(max_len=self.max_len, separator=self.separator)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureEncoder":
        enc = cls(d["name"], d["kind"], mean=d.get("mean", 0.0), std=d.get("std", 1.0),
                  max_len=d.get("max_len", 16), separator=d.get("separator", " "))
        if d["kind"] != "numeric":
            enc.index = CategoryIndex(vocab=d.get("vocab"), hash_buckets=d.get("hash_buckets"))
        return enc


def _numbers(col: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
            or pa.types.is_decimal(col.type) or pa.types.is_null(col.type)):
        try:
            col = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DistillError(f"{where}: column '{name}' is {col.type}, expected numbers") from None
    x = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return x, ~np.isfinite(x)


def _bags(col: pa.ChunkedArray, name: str, where: str, sep: str) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.split_pattern(col, sep)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        try:
            return pc.cast(col, pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DistillError(f"{where}: column '{name}' holds lists of {col.type.value_type}, which cannot be read as categories") from None
    raise DistillError(f"{where}: column '{name}' is {col.type}; a multi_categorical feature is a list column or a '{sep}'-separated string")


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
        enc = cls(task.type)
        if task.type == "multiclass":
            strings = _as_strings(col, task.label, where)
            enc.classes = sorted(v for v in pc.unique(strings).to_pylist() if v is not None)
            if len(enc.classes) < 2:
                raise DistillError(f"{where}: label '{task.label}' has {len(enc.classes)} class(es); multiclass needs at least 2")
        elif task.type == "regression":
            y = enc._regression_values(col, task.label, where)
            enc.mean, enc.std = float(y.mean()), float(y.std()) or 1.0
        return enc

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
