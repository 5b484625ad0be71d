"""What every feature kind declares: how it is fitted and encoded, the tensor it becomes, the graph
input it is exported as, and the request field the service takes for it.

A kind is one module in this folder that builds a `Kind` (see categorical.py); `KINDS` in
__init__.py maps a config's `type` to it. Nothing here imports torch: serving reads these too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa

# ONNX Runtime's name for a graph input's element type
ONNX_ELEMENT = {"int64": "tensor(int64)", "float32": "tensor(float)"}


class FeatureEncoder(Protocol):
    """A fitted encoder of one feature (each kind has its own class; all of them read like this)."""

    name: str
    kind: str  # a key of KINDS

    @property
    def cardinality(self) -> int: ...  # rows of the embedding table (0: no table)

    def encode(self, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, int]: ...  # array, filled count

    def to_dict(self) -> dict[str, Any]: ...


class Fit(Protocol):
    """Fitting one feature over chunks of its column: `add` each chunk, then `result`. An in-memory
    split is one chunk, a streamed one a chunk per row group: the same code fits both."""

    filled: int  # values missing (null, NaN, ±inf, empty bag) so far: encoding fills them

    def add(self, col: pa.ChunkedArray, where: str) -> None: ...

    def result(self) -> FeatureEncoder: ...


@dataclass(frozen=True)
class Kind:
    name: str
    fit: Callable[[Any], Fit]  # FeatureConfig -> a Fit
    from_dict: Callable[[dict[str, Any]], FeatureEncoder]  # encoders.json entry -> encoder
    check: Callable[[dict[str, Any]], str | None]  # what is wrong with an encoders.json entry (None: nothing)
    dtype: str  # of the encoded array, the training tensor and the graph input: "int64" | "float32"
    row_shape: tuple[int | str, ...]  # one row's shape; a name is an axis whose length varies (padded)
    row_type: pa.DataType  # a request's JSON values are put in this Arrow type before encoding
    csv_type: pa.DataType  # a CSV column of this kind is read as this type when scoring
    request_field: Any  # the service's pydantic field type (null always allowed: it means missing)
    describe: Callable[[dict[str, Any]], str]  # the field's description, from its manifest entry
    from_json: Callable[[Any, str, int, Any], Any]  # (value, feature, row, encoder) -> row_type value
    sample: Callable[[Any, np.ndarray, np.random.Generator], pa.Array]  # (encoder, null mask, rng)
    example: Callable[[Any], Any]  # a plausible request value (the OpenAPI page's example)

    @property
    def varying_axes(self) -> list[int]:
        """Axes of the (N, ...) tensor whose length varies between chunks and requests."""
        return [i + 1 for i, s in enumerate(self.row_shape) if isinstance(s, str)]

    def graph_input(self) -> dict[str, Any]:
        """The exported graph's input for one feature, as the manifest records it."""
        return {"dtype": self.dtype, "shape": ["batch", *self.row_shape]}

    @property
    def onnx_type(self) -> str:
        return ONNX_ELEMENT[self.dtype]
