"""Small data the tests make themselves: no downloads, a few hundred rows, seconds to train."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from distill.config import config_from_dict


def make_table(n: int, seed: int, n_users: int = 30) -> pa.Table:
    """A click log: serving features (user, item, price, tags) and a privileged signal `intent`
    that drives the label but is absent at serving time."""
    r = np.random.default_rng(seed)
    user = r.integers(0, n_users, n)
    item = r.integers(0, 20, n)
    price = r.lognormal(2, 0.5, n)
    intent = r.normal(0, 1, n)
    z = 0.8 * np.sin(user) + 0.5 * np.cos(item) + 1.8 * intent
    y = (r.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    tags = [" ".join(f"t{(u + k) % 7}" for k in range(1 + u % 3)) for u in user]
    return pa.table({
        "user": user, "item": [f"i{v}" for v in item], "price": price, "tags": tags,
        "intent": intent + r.normal(0, 0.3, n), "dwell": np.abs(intent) * 2, "click": y,
        "weight": np.ones(n),
    })


def base_config(tmp: Path, n_train: int = 600, **sections) -> dict:
    for name, n, seed in (("train", n_train, 1), ("valid", 300, 2), ("test", 300, 3)):
        pq.write_table(make_table(n, seed), tmp / f"{name}.parquet")
    raw = {
        "data": {"train": str(tmp / "train.parquet"), "valid": str(tmp / "valid.parquet"), "test": str(tmp / "test.parquet")},
        "task": {"type": "binary", "label": "click", "group": "user"},
        "features": [
            {"name": "user", "type": "categorical"},
            {"name": "item", "type": "categorical", "hash_buckets": 50},
            {"name": "price", "type": "numeric"},
            {"name": "tags", "type": "multi_categorical"},
            {"name": "intent", "type": "numeric", "privileged": True},
            {"name": "dwell", "type": "numeric", "privileged": True},
        ],
        "teacher": {"model": "dnn", "hidden": [32, 16], "embedding_dim": 8},
        "student": {"model": "dnn", "hidden": [16], "embedding_dim": 8},
        "distillation": {"mode": "sync", "weight": 0.5},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.01, "seed": 0},
        "output": str(tmp / "run"),
    }
    for key, value in sections.items():
        raw[key].update(value) if isinstance(value, dict) and isinstance(raw.get(key), dict) else raw.__setitem__(key, value)
    return raw


def trained_config(tmp: Path) -> dict:
    """A small sync run (with a baseline) trained for one epoch into tmp; returns its config."""
    from distill.run import train
    raw = base_config(tmp)
    raw["train"]["epochs"] = 1
    train(cfg_of(raw), quiet=True)
    return raw


@pytest.fixture
def raw_config(tmp_path):
    return base_config(tmp_path)


@pytest.fixture
def config_file(tmp_path, raw_config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    return path


def cfg_of(raw: dict):
    return config_from_dict(raw)


class HostReads:
    """Counts the host's reads of tensor values inside `with HostReads() as reads:` (reads.count):
    .item() / int() / float() / bool() reach the dispatcher as aten._local_scalar_dense, .tolist()
    does not, so it is patched while the block runs. On a GPU each such read waits for the device."""

    def __init__(self):
        self.count = 0

    def __enter__(self) -> "HostReads":
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        counter, tolist = self, torch.Tensor.tolist

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        def counted_tolist(t):
            counter.count += 1
            return tolist(t)

        self._restore = lambda: setattr(torch.Tensor, "tolist", tolist)
        torch.Tensor.tolist = counted_tolist
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._restore()


def train_interrupted(raw: dict, out: Path, steps: int, phase: str | None = None) -> None:
    """Train `raw` into `out` and interrupt it, as Ctrl-C would, once `steps` steps (of `phase`, if
    given) are logged; the interruption is asserted, and RunLog.step is itself again afterwards."""
    from distill.run import train
    from distill.training import common
    original = common.RunLog.step

    def stop(self, record):
        original(self, record)
        if (phase is None or record["phase"] == phase) and record["step"] + 1 >= steps:
            common.RunLog.step = original
            raise KeyboardInterrupt

    common.RunLog.step = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg_of(raw), output=out, quiet=True)
    finally:
        common.RunLog.step = original
