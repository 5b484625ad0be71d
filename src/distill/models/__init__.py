"""The model catalogue: one plain registry the CLI looks names up in.

Every model is `factory(spec: ModelSpec) -> nn.Module` whose forward takes a `Batch` and returns
logits: (B,) for binary and regression, (B, C) for multiclass. A user's own factory plugs in as
``model: "module:pkg.mod:factory"``, imported from sys.path (an installed package, or a directory on
PYTHONPATH; `python -m distill` does not search the working directory). Importing it runs its code:
a run directory whose config names one is code, not data (README, "Trust boundary").

What the batch gives a model: `batch[name]` per feature it reads: categorical int64 (B,), numeric
float32 (B, 2) (value, missing), multi_categorical and sequence int64 (B, L), 0 padding (the mask is
ids != 0; a sequence is most recent first). `spec.features` carries each one's cardinality and, for
a sequence, `shares` / `encoder` / `max_len`; models/sequence.py's encoders are free to reuse.
"""
from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from distill.config import ModelConfig
from distill.errors import DistillError
from distill.models.dcn_v2 import DCNv2
from distill.models.deepfm import DeepFM
from distill.models.din import DIN
from distill.models.dnn import DNN
from distill.models.parts import FeatureInfo, ModelSpec
from distill.models.two_tower import TwoTower
from distill.models.wide_deep import WideDeep

MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "dnn": DNN,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "dcn_v2": DCNv2,
    "two_tower": TwoTower,
    "din": DIN,
}


def resolve_factory(name: str) -> Callable[[ModelSpec], nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if not name.startswith("module:"):
        raise DistillError(f"unknown model '{name}'; choose one of {', '.join(MODELS)} or 'module:pkg.mod:factory'")
    target = name.removeprefix("module:").strip()
    mod_name, _, attr = target.partition(":")
    if not attr:
        raise DistillError(f"model '{name}': write it as 'module:pkg.mod:factory'")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise DistillError(f"model '{name}': cannot import '{mod_name}': {e} (module: imports from sys.path: "
                           f"install the package or add its directory to PYTHONPATH, e.g. PYTHONPATH=.)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise DistillError(f"model '{name}': '{mod_name}' has no callable '{attr}'")
    return factory


def build_model(mc: ModelConfig, features: tuple[FeatureInfo, ...], out_dim: int, sparse: bool = False) -> nn.Module:
    spec = ModelSpec(
        features=features, out_dim=out_dim, hidden=tuple(mc.hidden), embedding_dim=mc.embedding_dim,
        dropout=mc.dropout, cross_layers=mc.cross_layers, tower_dim=mc.tower_dim,
        user_features=tuple(mc.user_features or ()), options=dict(mc.options), sparse=sparse,
    )
    model = resolve_factory(mc.model)(spec)
    if not isinstance(model, nn.Module):
        raise DistillError(f"model '{mc.model}': the factory returned {type(model).__name__}, not an nn.Module")
    return model
