"""The reference CTR shape of issue 5: 26 categorical features of 10,000 values, 13 numeric, plus 4
categorical and 4 numeric privileged ones; a label that depends on both."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_CAT, N_NUM, N_PCAT, N_PNUM, VOCAB = 26, 13, 4, 4, 10_000


def make_arrays(n: int, seed: int = 0, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    cat = r.integers(0, vocab, (n, N_CAT), dtype=np.int64)
    num = r.normal(size=(n, N_NUM)).astype(np.float32)
    pcat = r.integers(0, vocab, (n, N_PCAT), dtype=np.int64)
    pnum = r.normal(size=(n, N_PNUM)).astype(np.float32)
    w = np.random.default_rng(99).normal(size=N_NUM + N_PNUM)
    z = num @ w[:N_NUM] * 0.3 + pnum @ w[N_NUM:] + 0.2 * np.sin(cat[:, 0]) - 1.0
    y = (r.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return {"cat": cat, "num": num, "pcat": pcat, "pnum": pnum, "y": y}


def write_parquet(a: dict[str, np.ndarray], path: Path, row_group: int = 256 * 1024) -> None:
    cols = {f"c{i}": a["cat"][:, i] for i in range(N_CAT)}
    cols |= {f"n{i}": a["num"][:, i] for i in range(N_NUM)}
    cols |= {f"pc{i}": a["pcat"][:, i] for i in range(N_PCAT)}
    cols |= {f"pn{i}": a["pnum"][:, i] for i in range(N_PNUM)}
    cols["y"] = a["y"].astype(np.int8)
    pq.write_table(pa.table(cols), path, row_group_size=row_group)


def features(hash_buckets: int | None = None) -> list[dict]:
    extra = {"hash_buckets": hash_buckets} if hash_buckets else {}
    return ([{"name": f"c{i}", "type": "categorical", **extra} for i in range(N_CAT)]
            + [{"name": f"n{i}", "type": "numeric"} for i in range(N_NUM)]
            + [{"name": f"pc{i}", "type": "categorical", "privileged": True, **extra} for i in range(N_PCAT)]
            + [{"name": f"pn{i}", "type": "numeric", "privileged": True} for i in range(N_PNUM)])
