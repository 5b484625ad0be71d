"""Pieces the loop (loop.py) and the phases share: optimizers, batched inference, evaluation, keep-the-best
(step logs: log.py; where tensors live and autocast: distill/device.py)."""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from typing import Any, Iterable

import torch
from torch import nn

from distill import distributed, metrics
from distill.config import Config
from distill.data.batch import Encoded
from distill.data.loader import cache_home
from distill.data.encoders import LabelEncoder
from distill.errors import DistillError
from distill.inference import label_values, model_device, predict_logits, to_output  # noqa: F401  (re-exported)
from distill.training.log import RunLog  # noqa: F401  (re-exported: the loops import it from here)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


def unique_parameters(*models: nn.Module) -> list[nn.Parameter]:
    """Parameters of all models, each once (shared embedding tables appear in both)."""
    seen: set[int] = set()
    out = []
    for m in models:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def make_optimizer(kind: str, lr: float, weight_decay: float, params: list[nn.Parameter],
                   models: tuple[nn.Module, ...] = ()) -> "torch.optim.Optimizer | Optimizers":
    """The optimizer `kind` (train.optimizer) over `params`; the sparse embedding tables of
    `models` (train.sparse_embeddings) get SparseAdam and everything else `kind`."""
    optimizer = OPTIMIZERS[kind]
    # Adam's fused kernel updates every tensor in one pass: a few % faster per step on CPU
    make = functools.partial(optimizer, fused=True) if kind in ("adam", "adamw") else optimizer
    sparse_ids = {id(m.weight) for model in models for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    if not sparse_ids:
        return make(params, lr=lr, weight_decay=weight_decay)
    sparse = [p for p in params if id(p) in sparse_ids]
    dense = [p for p in params if id(p) not in sparse_ids]
    parts = [torch.optim.SparseAdam(sparse, lr=lr)]
    if dense:
        parts.append(make(dense, lr=lr, weight_decay=weight_decay))
    return Optimizers(parts)


class Optimizers:
    """Several optimizers stepped as one (sparse embedding tables + dense layers)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts
        self.param_groups = [g for p in parts for g in p.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parts:
            p.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for p in self.parts:
            p.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, s in zip(self.parts, state["parts"]):
            p.load_state_dict(s)


@torch.no_grad()
def predict_rows(model: nn.Module, loader, features: list[str], log: RunLog | None = None,
                 precision: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """Logits for every training row, placed by row number (works for streamed splits too); with
    `log`, shown as a progress phase ("soft labels"); `precision`: an autocast context, as in training."""
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    batches: Iterable = loader.ordered()
    if log is not None:
        batches = log.track(batches, "soft labels", total_rows=loader.num_rows)
    device = model_device(model)
    for b in batches:
        b = b.to(device)
        with precision or contextlib.nullcontext():
            z = model(b.select(features)).float()
        if out is None:  # the cache lives where the student trains (its rows are gathered each step), unless too large
            shape = (loader.num_rows,) + tuple(z.shape[1:])
            home = cache_home(loader, device, math.prod(shape) * z.element_size())
            out = torch.zeros(shape, dtype=z.dtype, device=home)
        out[b.index.to(out.device)] = z.to(out.device)  # no-ops unless the cache is in host memory
    model.train(was_training)
    assert out is not None
    return distributed.sum_parts(out)  # under torchrun each rank predicted its slices: gather them


def evaluate(model: nn.Module, data: Encoded, features: list[str], label: LabelEncoder,
             ks: tuple[int, ...] | list[int] = (10,)) -> dict[str, float]:
    """Metrics over the whole split; under torchrun each rank predicts a slice, all ranks get all rows."""
    logits = distributed.predict_all(lambda part: predict_logits(model, part, features), data)
    pred = to_output(logits, label)
    return metrics.compute(label.task, label_values(data, label), pred, data.group, ks)  # ks: task.ranking_k


def check_finite(step: int, terms: dict[str, float]) -> None:
    for name, value in terms.items():
        if not math.isfinite(value):
            raise DistillError(f"training diverged at step {step}: {name} is {value} (lower train.lr or check the data)")


class KeepBest:
    """Early stopping on a validation metric, keeping a copy of the best weights of `models`."""

    def __init__(self, metric: str, patience: int | None, models: Iterable[nn.Module]):
        self.metric = metric
        self.patience = patience
        self.models = list(models)
        self.sign = 1.0 if metrics.HIGHER_IS_BETTER.get(metric, True) else -1.0
        self.best: float | None = None
        self.best_state: list[dict[str, torch.Tensor]] | None = None
        self.bad = 0

    def update(self, scores: dict[str, float]) -> bool:
        """Record one evaluation; returns True when training should stop."""
        if self.metric not in scores:
            raise DistillError(f"train.early_stopping.metric: '{self.metric}' is not computed for this task (have: {', '.join(scores)})")
        value = scores[self.metric]
        if self.best is None or self.sign * (value - self.best) > 0:
            self.best, self.bad = value, 0
            # one deepcopy of the list keeps shared tables shared inside the copy
            self.best_state = copy.deepcopy([m.state_dict() for m in self.models])
            return False
        self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "best_state": self.best_state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.bad, self.best_state = state["best"], state["bad"], state["best_state"]

    def restore(self) -> None:
        if self.best_state is not None:
            for m, s in zip(self.models, self.best_state):
                m.load_state_dict(s)


def stopping_metric(cfg: Config) -> tuple[str, int | None]:
    es = cfg.train.early_stopping
    metric = (es.metric if es and es.metric else None) or metrics.default_metric(cfg.task.type)
    return metric, (es.patience if es else None)
