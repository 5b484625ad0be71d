"""A categorical feature: one category per row, encoded as one id (N,) int64; an embedding table.

Ids: 0 is padding (only bags use it), 1 is the out-of-vocabulary / missing bucket, 2.. are the
vocabulary (or the hash buckets). A category's identity is its string form ("3"), whichever type
a file stores it in. The vocabulary and hashing live here; multi_categorical.py reuses them.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import StrictInt, StrictStr

from distill.data.kinds.kind import Kind
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


class CategoryCounts:
    """How often each category occurs, summed chunk by chunk; then the vocabulary of those seen at
    least `min_count` times."""

    def __init__(self) -> None:
        self.counts: pa.StructArray | None = None  # pc.value_counts' form: {values, counts}

    def add(self, values: pa.ChunkedArray | pa.Array) -> None:
        counts = pc.value_counts(values.drop_null() if values.null_count else values)
        self.counts = counts if self.counts is None else _merge(self.counts, counts)

    def index(self, min_count: int, hash_buckets: int | None = None) -> CategoryIndex:
        index = CategoryIndex(hash_buckets=hash_buckets)
        index._ints = None
        if hash_buckets is None:
            if self.counts is None:
                index.vocab = []
                return index
            vals, cnts = self.counts.field("values"), self.counts.field("counts")
            keep = pc.filter(vals, pc.greater_equal(cnts, min_count))
            if pa.types.is_integer(keep.type):
                # vectorised: the vocabulary is still ordered by string form, as for any column
                ints = keep.to_numpy(zero_copy_only=False).astype(np.int64)
                strs = ints.astype(str)
                order = np.argsort(strs, kind="stable")
                index.vocab = strs[order].tolist()
                index._ints = (pa.array(ints[order], pa.int64()), np.arange(len(order), dtype=np.int64))
            else:
                index.vocab = sorted(str(v) for v in keep.to_pylist() if v is not None)
        return index


def _merge(a: pa.StructArray, b: pa.StructArray) -> pa.StructArray:
    """Two value_counts results as one (counts of a category seen in both are added)."""
    va, vb = a.field("values"), b.field("values")
    if va.type != vb.type:  # one chunk held integers, another strings: a category is its string form
        va, vb = pc.cast(va, pa.string()), pc.cast(vb, pa.string())
    both = pa.table({"values": pa.concat_arrays([va, vb]), "counts": pa.concat_arrays([a.field("counts"), b.field("counts")])})
    summed = both.group_by("values").aggregate([("counts", "sum")])
    return pa.StructArray.from_arrays([summed["values"].combine_chunks(), summed["counts_sum"].combine_chunks()],
                                      names=["values", "counts"])


@dataclass
class CategoricalEncoder:
    name: str
    index: CategoryIndex
    kind: ClassVar[str] = "categorical"

    @property
    def cardinality(self) -> int:
        return self.index.size

    def encode(self, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, int]:
        values = _categories(col, self.name, where)
        return self.index.encode(values), values.null_count  # (N,)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "vocab": self.index.vocab, "hash_buckets": self.index.hash_buckets}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CategoricalEncoder":
        return cls(d["name"], CategoryIndex(vocab=d.get("vocab"), hash_buckets=d.get("hash_buckets")))


def check_index(d: dict[str, Any]) -> str | None:
    """What is wrong with the vocabulary or hashing of a stored encoder, if anything."""
    vocab, buckets = d.get("vocab"), d.get("hash_buckets")
    if buckets is not None:
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            return "'hash_buckets' must be a positive integer"
    elif not isinstance(vocab, list):
        return "needs a 'vocab' list or 'hash_buckets'"
    else:
        bad = next((j for j, v in enumerate(vocab) if not isinstance(v, str)), None)
        if bad is not None:
            return (f"vocab[{bad}] is {json.dumps(vocab[bad])}; "
                    f"the vocabulary holds strings only (missing values go to the out-of-vocabulary bucket)")
    return None


class CategoricalFit:
    def __init__(self, spec: Any):  # a FeatureConfig
        self.spec, self.counts, self.filled = spec, CategoryCounts(), 0

    def add(self, col: pa.ChunkedArray, where: str) -> None:
        values = _categories(col, self.spec.name, where)
        self.filled += values.null_count
        if not self.spec.hash_buckets:  # hashing needs no vocabulary
            self.counts.add(values)

    def result(self) -> CategoricalEncoder:
        return CategoricalEncoder(self.spec.name, self.counts.index(self.spec.min_count, self.spec.hash_buckets))


# ----------------------------------------------------------------------------- serving

Category = Union[StrictStr, StrictInt]


def category_from_json(value: Any, name: str, row: int, enc: Any = None) -> str:
    """One JSON category as the string the encoders read (ints and strings name the same category)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DistillError(f"row {row}: feature '{name}' must be a string or an integer, got {type(value).__name__}")
    return str(value)


def drawer(enc: Any, rng: np.random.Generator) -> Callable[[], str]:
    """Draws plausible categories of `enc` (sometimes unseen ones, so the OOV path runs too)."""
    vocab = (enc.index.vocab if enc.index and enc.index.vocab else None) or [f"v{i}" for i in range(50)]

    def draw() -> str:
        return f"unseen-{rng.integers(1 << 30)}" if rng.random() < 0.1 else vocab[rng.integers(len(vocab))]
    return draw


def _sample(enc: CategoricalEncoder, null: np.ndarray, rng: np.random.Generator) -> pa.Array:
    draw = drawer(enc, rng)
    return pa.array([None if m else draw() for m in null], pa.string())


def first_category(enc: Any) -> str | None:
    return (enc.index.vocab or ["a"])[0] if enc.index else None


KIND = Kind(
    name="categorical", fit=CategoricalFit, from_dict=CategoricalEncoder.from_dict, check=check_index,
    dtype="int64", row_shape=(),
    row_type=pa.string(), csv_type=pa.string(), request_field=Union[Category, None],
    describe=lambda f: "a category (string or integer); unseen values use the out-of-vocabulary bucket",
    from_json=category_from_json, sample=_sample, example=first_category,
)
