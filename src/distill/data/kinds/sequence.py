"""A behaviour sequence: the ids a user interacted with before this row, most recent first, as
(N, L) int64 ids padded with 0 (PAD). 0 is the mask: a position is real where its id is not 0, so
one tensor (and one graph input) carries both ids and mask. At most `max_len` ids are kept, the
first ones of the list: the most recent. Unknown ids go to the out-of-vocabulary id 1, as for a
categorical feature.

With `shares: item_id` the sequence uses the vocabulary of the categorical feature `item_id` (set
after fitting, in encoders.fit_encoders) and, in a model that reads both, its embedding table: the
candidate and its history are rows of one table. An id of the history that the candidate column
never held in training is out of vocabulary.

A side channel (`side_of: hist`, e.g. each item's category) is a sequence too, one id per item of
`hist`: `check_sides` refuses rows whose lengths differ, and the models add its embeddings to the
items' (models/parts.py).

The encoding is a bag's (multi_categorical.py: list column or separated string, cut at max_len);
what differs is what the models do with it (models/sequence.py: mean, din, self_attention), so
the encoder subclasses the bag's rather than copying it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import StrictStr

from distill.data.kinds.categorical import Category, CategoryCounts, CategoryIndex, check_index, drawer, first_category
from distill.data.kinds.kind import Kind
from distill.data.kinds.multi_categorical import BagEncoder, _bags, _sample, bag_from_json
from distill.errors import DistillError


@dataclass
class SequenceEncoder(BagEncoder):
    shares: str | None = None  # a categorical feature whose vocabulary (and table) this uses
    encoder: str | None = None  # mean | din | self_attention (None: mean)
    side_of: str | None = None  # the sequence this one runs beside, id by id (a side channel)
    kind: ClassVar[str] = "sequence"

    def encode(self, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, int]:
        ids, _ = super().encode(col, where)  # (N, L), PAD-filled
        return ids, col.null_count  # an empty history is a fact (a new user), only a null is missing

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "shares": self.shares, "encoder": self.encoder, "side_of": self.side_of}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SequenceEncoder":
        return cls(d["name"], CategoryIndex(vocab=d.get("vocab"), hash_buckets=d.get("hash_buckets")),
                   max_len=d.get("max_len", 16), separator=d.get("separator", " "),
                   shares=d.get("shares"), encoder=d.get("encoder"), side_of=d.get("side_of"))


class SequenceFit:
    def __init__(self, spec: Any):  # a FeatureConfig
        self.spec, self.counts, self.filled = spec, CategoryCounts(), 0

    def add(self, col: pa.ChunkedArray, where: str) -> None:
        seqs = _bags(col, self.spec.name, where, self.spec.separator, "sequence")
        self.filled += col.null_count
        if not (self.spec.hash_buckets or self.spec.shares):  # a shared id space brings its own vocabulary
            self.counts.add(pc.list_flatten(seqs))

    def result(self) -> SequenceEncoder:
        return SequenceEncoder(self.spec.name, self.counts.index(self.spec.min_count, self.spec.hash_buckets),
                               max_len=self.spec.max_len, separator=self.spec.separator,
                               shares=self.spec.shares, encoder=self.spec.encoder, side_of=self.spec.side_of)


def sample_side(enc: SequenceEncoder, main: pa.Array, main_separator: str, rng: np.random.Generator) -> pa.Array:
    """Plausible values of the side channel `enc` for the sampled sequence `main`: one per item (the
    leak check's synthetic rows must line up as real ones do)."""
    draw = drawer(enc, rng)
    out = []
    for v in main.to_pylist():
        k = 0 if v is None else len([t for t in v.split(main_separator) if t != ""])
        out.append(None if v is None else enc.separator.join(draw() for _ in range(k)))
    return pa.array(out, pa.string())


def check_sides(encoders: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> None:
    """A side channel holds one id per item of its sequence: the same length on every row."""
    for name, enc in encoders.items():
        main = getattr(enc, "side_of", None)
        if main is None or name not in arrays or main not in arrays:
            continue
        # equal lengths on every row (and one max_len, config.py) give one width too
        bad = np.flatnonzero((arrays[name] != 0).sum(1) != (arrays[main] != 0).sum(1))
        if len(bad):
            raise DistillError(f"{where}: column '{name}' (a side channel of '{main}') has another length than '{main}' "
                               f"in row {int(bad[0])}: it needs one value per item of '{main}'")


KIND = Kind(
    name="sequence", fit=SequenceFit, from_dict=SequenceEncoder.from_dict, check=check_index,
    dtype="int64", row_shape=("seq",),  # 0 is padding: the mask is ids != 0
    row_type=pa.list_(pa.string()), csv_type=pa.string(),  # a CSV holds a sequence as one joined string
    request_field=Union[list[Category], StrictStr, None],
    describe=lambda f: (f"a list of ids, most recent first (or one string of them joined by {f.get('separator', ' ')!r}); "
                        f"a longer list is cut to the feature's max_len, keeping the first (most recent) ids"),
    from_json=bag_from_json, sample=_sample, example=lambda enc: [first_category(enc)],
)
