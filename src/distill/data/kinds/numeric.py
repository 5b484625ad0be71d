"""A numeric feature: two float32 columns per row (N, 2), the standardised value and a missing
flag. Null, NaN and ±inf are filled with the training mean (0 after standardising) and flagged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from distill.data.kinds.kind import Kind
from distill.errors import DistillError


def _numbers(col: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
            or pa.types.is_decimal(col.type) or pa.types.is_null(col.type)):
        try:
            col = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DistillError(f"{where}: column '{name}' is {col.type}, expected numbers") from None
    x = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return x, ~np.isfinite(x)


class Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan, Golub and LeVeque's
    pairwise update: exact where sum-of-squares formulas cancel). Fitted on one chunk, `mean` and
    `std` are numpy's x.mean() and x.std() to the bit."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        if not x.size:
            return
        mean = x.mean()
        d = x - mean
        m2 = (d * d).sum()
        if self.n == 0:
            self.n, self.mean, self.m2 = x.size, mean, m2
            return
        n = self.n + x.size
        delta = mean - self.mean
        self.mean = self.mean + delta * (x.size / n)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * x.size / n)
        self.n = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


@dataclass
class NumericEncoder:
    name: str
    mean: float = 0.0
    std: float = 1.0
    kind: ClassVar[str] = "numeric"
    cardinality: ClassVar[int] = 0

    def encode(self, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, int]:
        x, missing = _numbers(col, self.name, where)
        # clipped: a value 10^4 standard deviations out (or 1e308) would overflow float32 to inf
        value = np.clip(np.where(missing, 0.0, (np.nan_to_num(x) - self.mean) / self.std), -1e4, 1e4)
        return np.stack([value, missing], axis=1).astype(np.float32), int(missing.sum())  # (N, 2)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NumericEncoder":
        return cls(d["name"], mean=d.get("mean", 0.0), std=d.get("std", 1.0))


def check_stats(d: dict[str, Any]) -> str | None:
    """What is wrong with the statistics of a stored encoder, if anything."""
    for key in ("mean", "std"):
        if not isinstance(d.get(key, 0.0), (int, float)) or not np.isfinite(d.get(key, 0.0)):
            return f"'{key}' must be a finite number"
    return None


class NumericFit:
    def __init__(self, spec: Any):  # a FeatureConfig
        self.name, self.moments, self.filled = spec.name, Moments(), 0

    def add(self, col: pa.ChunkedArray, where: str) -> None:
        x, missing = _numbers(col, self.name, where)
        self.moments.add(x[~missing])
        self.filled += int(missing.sum())

    def result(self) -> NumericEncoder:
        enc = NumericEncoder(self.name)
        if self.moments.n:
            enc.mean = float(self.moments.mean)
            enc.std = self.moments.std or 1.0
        return enc


def number_from_json(value: Any, name: str, row: int, enc: Any = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DistillError(f"row {row}: feature '{name}' must be a number, got {type(value).__name__}")
    return float(value)


def _sample(enc: NumericEncoder, null: np.ndarray, rng: np.random.Generator) -> pa.Array:
    x = enc.mean + enc.std * rng.normal(0, 1.5, len(null))
    return pa.array(x, pa.float64(), mask=null)


KIND = Kind(
    name="numeric", fit=NumericFit, from_dict=NumericEncoder.from_dict, check=check_stats,
    dtype="float32", row_shape=(2,),
    row_type=pa.float64(), csv_type=pa.float64(),
    request_field=Annotated[Union[float, None], Field(strict=True, allow_inf_nan=False)],
    describe=lambda f: "a finite number; null means missing",
    from_json=number_from_json, sample=_sample, example=lambda enc: round(enc.mean, 3),
)
