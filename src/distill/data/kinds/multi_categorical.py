"""A multi-categorical feature (a bag: tags, recent items): up to `max_len` categories per row,
(N, L) int64 ids padded with 0 (PAD), L the longest bag of the batch; a pooled embedding table.
A bag is a list column or a string of categories joined by `separator`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import StrictStr

from distill.data.kinds.categorical import PAD, Category, CategoryCounts, CategoryIndex, check_index, drawer, first_category
from distill.data.kinds.kind import Kind
from distill.errors import DistillError


def _bags(col: pa.ChunkedArray, name: str, where: str, sep: str, kind: str = "multi_categorical") -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.split_pattern(col, sep)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        try:
            return pc.cast(col, pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DistillError(f"{where}: column '{name}' holds lists of {col.type.value_type}, which cannot be read as categories") from None
    raise DistillError(f"{where}: column '{name}' is {col.type}; a {kind} feature is a list column or a '{sep}'-separated string")


@dataclass
class BagEncoder:
    name: str
    index: CategoryIndex
    max_len: int = 16
    separator: str = " "
    kind: ClassVar[str] = "multi_categorical"

    @property
    def cardinality(self) -> int:
        return self.index.size

    def encode(self, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, int]:
        bags = pa.chunked_array(_bags(col, self.name, where, self.separator, self.kind).chunks).combine_chunks()
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
        return {"name": self.name, "kind": self.kind, "vocab": self.index.vocab, "hash_buckets": self.index.hash_buckets,
                "max_len": self.max_len, "separator": self.separator}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BagEncoder":
        return cls(d["name"], CategoryIndex(vocab=d.get("vocab"), hash_buckets=d.get("hash_buckets")),
                   max_len=d.get("max_len", 16), separator=d.get("separator", " "))


class BagFit:
    def __init__(self, spec: Any):  # a FeatureConfig
        self.spec, self.counts, self.filled = spec, CategoryCounts(), 0

    def add(self, col: pa.ChunkedArray, where: str) -> None:
        bags = _bags(col, self.spec.name, where, self.spec.separator)
        self.filled += int(pc.sum(pc.equal(pc.fill_null(pc.list_value_length(bags), 0), 0)).as_py() or 0)
        if not self.spec.hash_buckets:
            self.counts.add(pc.list_flatten(bags))

    def result(self) -> BagEncoder:
        return BagEncoder(self.spec.name, self.counts.index(self.spec.min_count, self.spec.hash_buckets),
                          max_len=self.spec.max_len, separator=self.spec.separator)


def bag_from_json(value: Any, name: str, row: int, enc: BagEncoder) -> list[str]:
    """A list of categories, or one string of them joined by the feature's separator."""
    if isinstance(value, str):
        return value.split(enc.separator)
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in value):
        raise DistillError(f"row {row}: feature '{name}' must be a list of strings or integers")
    return [str(v) for v in value]


def _sample(enc: BagEncoder, null: np.ndarray, rng: np.random.Generator) -> pa.Array:
    draw = drawer(enc, rng)
    return pa.array([None if m else enc.separator.join(draw() for _ in range(rng.integers(0, 5))) for m in null], pa.string())


KIND = Kind(
    name="multi_categorical", fit=BagFit, from_dict=BagEncoder.from_dict, check=check_index,
    dtype="int64", row_shape=("bag",),
    row_type=pa.list_(pa.string()), csv_type=pa.string(),  # a CSV holds a bag as one joined string
    request_field=Union[list[Category], StrictStr, None],
    describe=lambda f: f"a list of categories, or one string of them joined by the separator ({f.get('separator', ' ')!r})",
    from_json=bag_from_json, sample=_sample, example=lambda enc: [first_category(enc)],
)
