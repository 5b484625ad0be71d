"""Feature kinds, one module each: what a kind is fitted and encoded to, the tensor it becomes, its
graph input and its request field all live in that module (see kind.py for the list).

A new kind is a module here that builds a `Kind`, an entry in `KINDS`, its name in
config.FeatureType, and what the models do with its tensor (models/parts.py).
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from distill.data.kinds import categorical, multi_categorical, numeric, sequence
from distill.data.kinds.kind import FeatureEncoder, Fit, Kind

KINDS: dict[str, Kind] = {k.name: k for k in (categorical.KIND, numeric.KIND, multi_categorical.KIND, sequence.KIND)}


def fit_feature(spec: Any, col: pa.ChunkedArray, where: str) -> FeatureEncoder:
    """The encoder of the feature `spec` (a FeatureConfig) fitted on one whole column."""
    fit = KINDS[spec.type].fit(spec)
    fit.add(col, where)
    return fit.result()


def feature_from_dict(d: dict[str, Any]) -> FeatureEncoder:
    """An encoder as encoders.json stores it."""
    return KINDS[d["kind"]].from_dict(d)


__all__ = ["KINDS", "FeatureEncoder", "Fit", "Kind", "feature_from_dict", "fit_feature"]
