"""The two-tower student split for retrieval: a user-tower graph and an item-tower graph (ONNX),
each taking only its own serving features and returning vectors whose inner product is the fused
student's logit (the item vector carries the global bias in its last coordinate, the user vector a
1 there: models/two_tower.py).

    user_tower.onnx   inputs: the user tower's serving features → "vector" (B, d)
    item_tower.onnx   inputs: the item tower's serving features → "vector" (B, d)

`export(..., towers=True)` writes both (export.write_towers) beside the fused model.onnx and describes them in the
manifest's "towers" entry: {"user": {"file", "inputs", "dim"}, "item": {...}}.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.data.batch import Batch
from distill.errors import DistillError

SIDES = ("user", "item")
FILES = {"user": "user_tower.onnx", "item": "item_tower.onnx"}


def tower_features(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Each tower's features, in the order of the model's serving features `names`."""
    from distill.models.two_tower import tower_split
    split = tower_split(model, names)
    if split is None:
        raise DistillError("--towers: the student is not a two_tower model (student.model: two_tower); "
                           "only a two-tower student splits into a user and an item graph")
    return split


class TowerGraph(nn.Module):
    """One tower of the student, taking one tensor per feature of that tower (positional)."""

    def __init__(self, model: nn.Module, side: str, names: list[str]):
        super().__init__()
        self.model, self.side, self.names = model, side, list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = Batch(dict(zip(self.names, inputs)))
        return self.model.user_vector(batch) if self.side == "user" else self.model.item_vector(batch)


def torch_vectors(model: nn.Module, side: str, batch: Batch) -> torch.Tensor:
    """The PyTorch student's vectors for one side (what the leak check compares the graph with)."""
    with torch.no_grad():
        return model.user_vector(batch) if side == "user" else model.item_vector(batch)


def run_vectors(run: Any, role: str, side: str, table: Any, where: str = "data", batch_size: int = 8192) -> "np.ndarray":
    """The PyTorch `role` model's `side` vectors for the rows of `table` (a pyarrow Table), (N, d)."""
    import numpy as np
    feats = tower_features(run.models[role], run.features[role])[side]
    enc = run.encoders.encode(run.config, table, where, features=feats, label=False)
    model = run.models[role]
    was = model.training
    model.eval()
    out = [torch_vectors(model, side, b.select(feats)) for b in enc.batches(batch_size)]
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
