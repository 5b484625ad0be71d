"""Read the splits of a run, fit the encoders on the training split and encode every split as
`Encoded` tensors (the encoders themselves: distill.data.encoders)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.config import Config
from distill.data.batch import Encoded
from distill.data.encoders import Encoders  # noqa: F401  (re-exported: `from distill.data.dataset import Encoders`)
from distill.data.io import read_table
from distill.data.stream import fit_streaming
from distill.errors import DistillError


@dataclass
class Splits:
    encoders: Encoders
    train: Encoded | None  # None when the training split is streamed (data.streaming)
    valid: Encoded | None
    test: Encoded | None
    train_missing: dict[str, int] | None = None  # filled values in train, per feature


def load_splits(cfg: Config, encoders: Encoders | None = None) -> Splits:
    """Read and encode train / valid / test; encoders are fitted on train only (or given, e.g. a
    trained teacher's, so its inputs mean what they meant when it learned). With data.streaming the
    training split is only scanned to fit the encoders; valid and test are held in memory."""
    soft = cfg.distillation.soft_label if cfg.distillation.mode == "offline" else None
    if cfg.data.streaming:
        fitted, missing = fit_streaming(cfg)
        encoders = encoders or fitted
        train = None
    else:
        train_t = read_table(cfg.data.train, cfg.data.format)
        encoders = encoders or Encoders.fit(cfg, train_t, cfg.data.train, workers=torch.get_num_threads())
        train = encoders.encode(cfg, train_t, cfg.data.train, soft_label=soft)
        if cfg.distillation.mode == "offline" and cfg.distillation.soft_labels:  # several teachers' scores
            train.soft = soft_columns(encoders, train_t, cfg.data.train, cfg.distillation.soft_labels)
        if cfg.distillation.group:  # the within-group losses' own groups (training split only)
            train.distill_group = distill_group_column(train_t, cfg.data.train, cfg.distillation.group)
        missing = train.missing
        del train_t
    parts: dict[str, Encoded | None] = {}
    for split in ("valid", "test"):
        spec = getattr(cfg.data, split)
        parts[split] = encoders.encode(cfg, read_table(spec, cfg.data.format), spec) if spec else None
    if cfg.data.streaming and not (parts["valid"] or parts["test"]):
        raise DistillError("data.streaming: give a valid or test split to measure the models on")
    return Splits(encoders, train, parts["valid"], parts["test"], missing)


def distill_group_column(table, where: str, name: str):
    """distillation.group: the group ids of column `name` of the training split."""
    from distill.data.encoders import group_ids
    if name not in table.column_names:
        raise DistillError(f"{where}: distillation.group: no column '{name}'")
    return group_ids(table.column(name))


def soft_columns(encoders: Encoders, table, where: str, names: list[str]) -> torch.Tensor:
    """distillation.soft_labels: each column's scores as logits, stacked (N, K) or (N, K, C)."""
    for n in names:
        if n not in table.column_names:
            raise DistillError(f"{where}: distillation.soft_labels: no column '{n}'")
    return torch.stack([torch.from_numpy(encoders._soft_logits(table.column(n), n, where)) for n in names], dim=1)
