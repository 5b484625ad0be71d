"""`distill demo`: a synthetic e-commerce impression log where distillation has something to give.

How the generator works (all numbers fixed by the seed):
- 1000 users, 800 items, 10 categories. Latent taste vectors in R^8: θ_u ~ N(0, I/8) for users,
  φ_i ~ N(0, I) for items, ψ_c ~ N(0, I) for categories. Each item has a category c, a price, a
  quality and 1-3 tags. Users differ in activity (a few heavy users, many light ones). Each impression happens at an hour of the day.
- Each impression carries a *session intent* s ~ N(0, 1): how much the user wants this item's
  category right now. It drives the click but is not a serving feature.
- click ~ Bernoulli(σ(z)) with
      z = −1.6 + 1.5·⟨θ_u, ψ_c⟩ + 0.6·⟨θ_u, φ_i⟩ + 0.8·s + 0.4·quality_i − 0.3·log(price_i) + hour effect
  The user's taste for the category, ⟨θ_u, ψ_c⟩, is the largest served signal. A two-tower student
  can represent it (user_id on one side, item_category on the other), but from 0/1 clicks alone it
  learns it slowly: 100 impressions per user on average, spread over 10 categories, ~84% non-clicks.
- Privileged columns, logged but unusable by the served two-tower student:
  * user_cat_clicks_24h ~ Poisson(exp(1.0 + 0.4·s + 1.5·⟨θ_u, ψ_c⟩)): the user's clicks in the
    item's category in the last 24 h, a user×item cross feature (the PFD paper's CTR example). It
    reads the category taste off directly, row by row;
  * viewport_seconds = exp(0.5·s + 0.4·ε): how long the item stayed on screen, known only after
    the impression, a noisy view of s.
  A teacher that reads them predicts clicks much better. Its soft labels tell the student, on every
  impression, how much this user likes this category: a graded target where the hard label gives a
  mostly-0 coin flip. (They also carry s, which the student cannot use: to it, that part is noise,
  one reason to keep some weight on the hard label.)
- Train / valid / test: 100k / 20k / 40k impressions from the same world, different draws.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEMO_CONFIG = """\
# The demo: PFD on a synthetic impression log (see distill/demo.py for the generator).
data:
  train: {data}/train.parquet
  valid: {data}/valid.parquet
  test: {data}/test.parquet
task:
  type: binary
  label: click
  group: user_id              # GAUC per user
features:
  - {name: user_id, type: categorical}
  - {name: user_age, type: categorical}
  - {name: item_id, type: categorical}
  - {name: item_category, type: categorical}
  - {name: item_price, type: numeric}
  - {name: item_tags, type: multi_categorical}
  - {name: hour, type: categorical}
  - {name: user_cat_clicks_24h, type: numeric, privileged: true}
  - {name: viewport_seconds, type: numeric, privileged: true}
teacher:
  model: dcn_v2
  hidden: [64, 32]
  embedding_dim: 16
  dropout: 0.2                # the teacher overfits first; its soft labels should not memorise
student:
  model: two_tower
  hidden: [64]
  embedding_dim: 16
  user_features: [user_id, user_age, hour]
distillation:
  mode: sync
  weight: 0.8                 # λ: the student learns mostly from the teacher's soft labels
  schedule: {type: constant}
  share_embeddings: false     # sharing tables lets the teacher's loss move the student's embeddings
train:
  epochs: 6
  batch_size: 1024
  lr: 0.01
  seed: 0
  threads: 1                  # small batches: a second thread barely helps, and stalls when the CPUs are busy
  early_stopping: {metric: auc, patience: 2}
output: runs/demo
"""


def make_log(n_rows: int, seed: int, n_users: int = 1000, n_items: int = 800, n_cats: int = 10,
             world_seed: int = 1234) -> pa.Table:
    """`n_rows` impressions. Users and items come from `world_seed`, impressions from `seed`, so
    train, valid and test share one world."""
    w = np.random.default_rng(world_seed)
    k = 8
    theta = w.normal(0, 1 / np.sqrt(k), (n_users, k))
    phi = w.normal(0, 1, (n_items, k))
    item_cat = w.integers(0, n_cats, n_items)
    psi = w.normal(0, 1, (n_cats, k))
    quality = w.normal(0, 1, n_items)
    price = np.exp(w.normal(3, 0.8, n_items))
    user_age = w.integers(0, 6, n_users)
    n_tags = 40
    tag_sets = [" ".join(f"t{t}" for t in w.choice(n_tags, w.integers(1, 4), replace=False)) for _ in range(n_items)]
    activity = w.lognormal(0, 1, n_users)
    activity /= activity.sum()
    hour_effect = 0.3 * np.sin(np.arange(24) / 24 * 2 * np.pi)

    r = np.random.default_rng(seed)
    u = r.choice(n_users, n_rows, p=activity)  # a few heavy users, many light ones
    i = r.integers(0, n_items, n_rows)
    hour = r.integers(0, 24, n_rows)
    s = r.normal(0, 1, n_rows)  # session intent: drives clicks, never served
    affinity = (theta[u] * phi[i]).sum(1)
    cat_affinity = (theta[u] * psi[item_cat[i]]).sum(1)  # the user's taste for the item's category
    z = (-1.6 + 1.5 * cat_affinity + 0.6 * affinity + 0.8 * s + 0.4 * quality[i] - 0.3 * np.log(price[i])
         + hour_effect[hour])
    click = (r.random(n_rows) < 1 / (1 + np.exp(-z))).astype(np.int8)
    clicks_24h = r.poisson(np.exp(1.0 + 0.4 * s + 1.5 * cat_affinity))
    viewport = np.exp(0.5 * s + 0.4 * r.normal(0, 1, n_rows))
    return pa.table({
        "user_id": pa.array(u, pa.int64()),
        "user_age": pa.array(user_age[u], pa.int64()),
        "item_id": pa.array(i, pa.int64()),
        "item_category": pa.array(item_cat[i], pa.int64()),
        "item_price": pa.array(np.round(price[i], 2)),
        "item_tags": pa.array([tag_sets[j] for j in i], pa.string()),
        "hour": pa.array(hour, pa.int64()),
        "user_cat_clicks_24h": pa.array(clicks_24h, pa.int64()),
        "viewport_seconds": pa.array(np.round(viewport, 3)),
        "click": pa.array(click),
    })


def write_demo_data(directory: Path, n_train: int = 100_000, n_valid: int = 20_000, n_test: int = 40_000,
                    seed: int = 0) -> Path:
    """Write train/valid/test Parquet files and config.yaml into `directory`; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train", n_train, 1), ("valid", n_valid, 2), ("test", n_test, 3)):
        pq.write_table(make_log(n, seed * 10 + offset), directory / f"{name}.parquet")
    cfg = directory / "config.yaml"
    cfg.write_text(DEMO_CONFIG.replace("{data}", str(directory.resolve())))
    return cfg
