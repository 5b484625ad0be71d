"""More ways to teach, measured: one teacher vs several (mean, gate), hints vs logits alone, and
pointwise vs pairwise vs listwise L_d, on the demo log and on MovieLens-100k CTR (public, grouped by user).

    python -m benchmarks.teaching [--data demo ml] [--only one mean3 ...] [--seeds 3] [--root runs/teaching]

Each variant is one `distill compare CONFIG --seeds N` (skipped when ROOT/<data>/<variant>/compare.json
exists, so an interrupted run resumes); the configs are the data set's own (benchmarks.teachers_demo_configs
for the demo, benchmarks.movielens_ctr for MovieLens) with one change each, written to ROOT/<data>/<variant>.yaml.
Then results/teaching.md: each variant's test metrics and its verdict against the baseline (compare's),
and each pair of variants student − student, paired by seed (benchmarks.paired_students.paired).
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from benchmarks import common
from benchmarks.paired_students import paired

NAME = "teaching"
LUPI = {"model": "dnn", "hidden": [64, 32], "embedding_dim": 16, "features": "privileged"}


def _async(base: dict) -> dict:
    cfg = copy.deepcopy(base)
    cfg["distillation"]["mode"] = "async"
    return cfg


def _teachers(base: dict, ensemble: dict) -> dict:
    cfg = _async(base)
    teacher = cfg.pop("teacher")
    cfg["teachers"] = {"pfd": teacher, "md": {**teacher, "features": "serving"}, "lupi": dict(LUPI)}
    cfg["distillation"]["ensemble"] = ensemble
    return cfg


def _hint(base: dict, loss: str) -> dict:
    cfg = _async(base)
    cfg["distillation"]["hint"] = {"weight": 0.1, "loss": loss}
    return cfg


def _loss(base: dict, loss: str) -> dict:
    cfg = copy.deepcopy(base)  # the data set's own mode (sync), as benchmarks.ranking_distillation
    cfg["distillation"]["loss"] = loss
    return cfg


def _mix(base: dict, weights: dict[str, float], max_group_rows: int) -> dict:
    cfg = _loss(base, "listwise")
    cfg["distillation"].update(loss_weights=weights, max_group_rows=max_group_rows)
    return cfg


def _in_batch(base: dict, weights: dict[str, float], temperature: float | None = None) -> dict:
    """The within-group term over the ordinary shuffled batches (distillation.group_batches: in_batch):
    the pointwise run's batches, a term added on the rows of each user that share a batch."""
    cfg = _loss(base, next(n for n in weights if n != "pointwise"))
    cfg["distillation"].update(loss_weights=weights, group_batches="in_batch")
    if temperature is not None:
        cfg["distillation"]["temperature"] = temperature
    return cfg


def _batch(cfg: dict, rows: int, lr: float | None = None) -> dict:
    cfg["train"]["batch_size"] = rows  # more rows of each user share a batch
    if lr is not None:
        cfg["train"]["lr"] = lr
    return cfg


# name -> (what it is, config from the data set's base config)
VARIANTS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "one": ("one teacher (pfd), async", _async),
    "mean3": ("3 teachers (pfd, md, lupi), mean", lambda b: _teachers(b, {"type": "mean"})),
    "gate3": ("3 teachers, gate fitted on the training rows", lambda b: _teachers(b, {"type": "gate"})),
    "gate3_valid": ("3 teachers, gate fitted on the validation split", lambda b: _teachers(b, {"type": "gate", "fit_on": "valid"})),
    "hint_mse": ("one teacher + hint (mse, w = 0.1)", lambda b: _hint(b, "mse")),
    "hint_cosine": ("one teacher + hint (cosine, w = 0.1)", lambda b: _hint(b, "cosine")),
    "pointwise": ("sync, pointwise L_d", lambda b: _loss(b, "pointwise")),
    "pairwise": ("sync, pairwise L_d", lambda b: _loss(b, "pairwise")),
    "listwise": ("sync, listwise L_d", lambda b: _loss(b, "listwise")),
    "mix_chunk16": ("sync, pointwise 1 + listwise 0.5, groups cut to 16 rows",
                    lambda b: _mix(b, {"pointwise": 1.0, "listwise": 0.5}, 16)),
    "inb_pair05": ("sync, pointwise 1 + pairwise 0.5, in-batch groups",
                   lambda b: _in_batch(b, {"pointwise": 1.0, "pairwise": 0.5})),
    "inb_list05": ("sync, pointwise 1 + listwise 0.5, in-batch groups",
                   lambda b: _in_batch(b, {"pointwise": 1.0, "listwise": 0.5})),
    "inb_list2": ("sync, pointwise 1 + listwise 2, in-batch groups",
                  lambda b: _in_batch(b, {"pointwise": 1.0, "listwise": 2.0})),
    "inb_pair2_T2": ("sync, pointwise 1 + pairwise 2, in-batch groups, T = 2",
                     lambda b: _in_batch(b, {"pointwise": 1.0, "pairwise": 2.0}, 2.0)),
    "inb_list05_async": ("async (the teacher trained first, its best weights cached), pointwise 1 + listwise 0.5, in-batch groups",
                         lambda b: _async(_in_batch(b, {"pointwise": 1.0, "listwise": 0.5}))),
    "pointwise_b4096": ("sync, pointwise L_d, batches of 4096", lambda b: _batch(_loss(b, "pointwise"), 4096)),
    "inb_list2_b4096": ("sync, pointwise 1 + listwise 2, in-batch groups, batches of 4096",
                        lambda b: _batch(_in_batch(b, {"pointwise": 1.0, "listwise": 2.0}), 4096)),
    "pointwise_b4096_lr04": ("sync, pointwise L_d, batches of 4096, lr 0.04",
                             lambda b: _batch(_loss(b, "pointwise"), 4096, 0.04)),
    "inb_list2_b4096_lr04": ("sync, pointwise 1 + listwise 2, in-batch groups, batches of 4096, lr 0.04",
                             lambda b: _batch(_in_batch(b, {"pointwise": 1.0, "listwise": 2.0}), 4096, 0.04)),
}
# (variant, against): student − student, paired by seed
PAIRS = [("mean3", "one"), ("gate3", "one"), ("gate3_valid", "one"), ("gate3_valid", "gate3"), ("gate3_valid", "mean3"),
         ("hint_mse", "one"), ("hint_cosine", "one"), ("pairwise", "pointwise"), ("listwise", "pointwise"),
         ("mix_chunk16", "pointwise"), ("inb_pair05", "pointwise"), ("inb_list05", "pointwise"),
         ("inb_list2", "pointwise"), ("inb_pair2_T2", "pointwise"), ("inb_list2_b4096", "pointwise_b4096"),
         ("inb_list05_async", "one"), ("inb_list2_b4096_lr04", "pointwise_b4096_lr04"),
         ("inb_list2_b4096_lr04", "pointwise")]


def base_config(data: str, root: Path) -> dict:
    """The data set's own config (written once under ROOT/<data>/data)."""
    where = root / data / "data"
    if not (where / "config.yaml").is_file():
        if data == "adult":
            write_adult(where)
        elif data == "demo":
            from distill.demo import write_demo_data
            write_demo_data(where)
        else:
            from benchmarks.movielens_ctr import write_task
            write_task(where)
    return yaml.safe_load((where / "config.yaml").read_text())


def write_adult(where: Path, epochs: int = 5) -> None:
    """adult as benchmarks.pfd_adult's "PFD async" (dnn 64-32 teacher on serving + privileged, dnn
    64-32 student, λ = 0.5 after one epoch, batches of 256, lr 1e-3), with 5 epochs instead of 10
    (the shared machine's time; early stopping stopped most of its runs before 10 anyway)."""
    from benchmarks import pfd_adult
    data = pfd_adult.prepared(None)
    paths = common.write_parquet_splits(where, data)
    delay = -(-data["train"].num_rows // 256)
    cfg = {"data": paths, "task": {"type": "binary", "label": "label"}, "features": pfd_adult.features(),
           "teacher": dict(pfd_adult.SMALL), "student": dict(pfd_adult.SMALL),
           "distillation": {"mode": "async", "weight": 0.5, "schedule": {"type": "delayed", "steps": delay}},
           "train": {"epochs": epochs, "batch_size": 256, "lr": 1e-3, "seed": 0, "threads": 1,
                     "early_stopping": {"metric": "auc", "patience": 2}},
           "output": str(where.parent / "run")}
    (where / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_variant(data: str, variant: str, seeds: int, root: Path) -> None:
    out = root / data / variant
    if (out / "compare.json").is_file():
        return
    cfg = VARIANTS[variant][1](base_config(data, root))
    cfg["output"] = str(out / "run")
    path = root / data / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distill", "compare", str(path), "--seeds", str(seeds), "--output", str(out),
                    "--no-report", "-q", "--overwrite"], check=True)
    (root / data / f"{variant}.wall.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "seeds": seeds}))


DATA = {"demo": "the demo log (distill.demo: 100,000 training impressions, grouped by user)",
        "ml": "MovieLens-100k CTR (benchmarks.movielens_ctr: 70,001 training ratings, grouped by user)",
        "adult": "adult census income (benchmarks.pfd_adult's data and PFD async config, 5 epochs; no groups)"}
SHOWN = ("auc", "gauc", "ndcg@10")


def variant_rows(data: str, root: Path) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """One table row per variant run: reference model, student, its verdict against the baseline."""
    table, csv = [], []
    for v, (what, _) in VARIANTS.items():
        out = root / data / v
        if not (out / "compare.json").is_file():
            continue
        c = json.loads((out / "compare.json").read_text())
        wall = json.loads((root / data / f"{v}.wall.json").read_text())["seconds"]
        teachers = ", ".join(f"{n.removeprefix('teacher:')} {m['auc']['mean']:.4f}" for n, m in c.get("teachers", {}).items())
        verdicts = []
        for m in ("auc", "gauc"):
            g = c["verdict"]["metrics"].get(m)
            verdicts.append(f"{g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] {g['verdict']}" if g else "–")
        table.append([f"{v}: {what}", teachers or "–", f"{c['teacher']['auc']['mean']:.4f}",
                      f"{c['baseline']['auc']['mean']:.4f}"]
                     + [f"{c['student'][m]['mean']:.4f} ± {c['student'][m]['std']:.4f}" if m in c["student"] else "–"
                        for m in SHOWN]
                     + verdicts + [f"{wall:.0f}"])
        csv += [{"data": data, "variant": v, "model": role, "metric": m, "mean": c[role][m]["mean"], "std": c[role][m]["std"]}
                for role in ("teacher", "baseline", "student") for m in SHOWN if m in c[role]]
    return table, csv


def pair_rows(data: str, root: Path) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Student − student for each pair of PAIRS whose two runs exist."""
    from benchmarks.paired_students import cell
    table, csv = [], []
    for a, b in PAIRS:
        if not all((root / data / x / "compare.json").is_file() for x in (a, b)):
            continue
        cells = []
        for m in SHOWN:
            if m not in json.loads((root / data / a / "compare.json").read_text())["student"]:
                cells.append("–")
                continue
            r = paired(root / data / a, root / data / b, m)
            cells.append(cell(r))
            csv.append({"data": data, "variant": a, "against": b, "metric": m, "gain": r["gain"], "low": r["low"],
                        "high": r["high"], "verdict": r["verdict"]})
        table.append([f"{a} − {b}"] + cells)
    return table, csv


def total_wall(root: Path) -> float:
    return sum(json.loads(p.read_text())["seconds"] for p in root.glob("*/*.wall.json"))


def summarize(root: Path, out: Path, notes: str, name: str = NAME) -> str:
    import torch
    parts, rows = [], []
    for data in DATA:
        if not (root / data).is_dir():
            continue
        t, c = variant_rows(data, root)
        p, q = pair_rows(data, root)
        rows += c + q
        parts.append(f"## {DATA[data]}\n\n" + common.md_table(
            ["variant", "teachers (test AUC)", "reference AUC (teacher or ensemble)", "baseline AUC", "student AUC",
             "student GAUC", "student NDCG@10", "student − baseline (AUC)", "student − baseline (GAUC)", "wall s"], t)
            + "\nStudent against student, paired by seed (t-interval over 3 seeds):\n\n"
            + common.md_table(["comparison", "AUC", "GAUC", "NDCG@10"], p))
    md = (f"# More ways to teach, measured: several teachers, hints, within-group losses\n\n"
          f"Command: `python -m benchmarks.teaching` (runs under `{root}`). "
          f"`torch.backends.cpu.get_cpu_capability()` = `{torch.backends.cpu.get_cpu_capability()}`. "
          f"{common.environment_note()} Wall time: {total_wall(root):.0f} s for all the compare runs.\n\n" + notes + "\n\n" + "\n".join(parts))
    common.write_results(out, name, md, rows)
    return md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/teaching"))
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--only", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--notes", type=Path, default=None, help="a Markdown file of reading notes put above the tables")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--name", default=NAME, help="the results' file name (results/NAME.md, .csv)")
    args = ap.parse_args(argv)
    if not args.summarize_only:
        for data in args.data:
            for v in args.only:
                run_variant(data, v, args.seeds, args.root)
    common.setup_torch()  # the note below says what the runs used: one thread (train.threads: 1 in every config)
    notes = args.notes.read_text() if args.notes else ""
    print(summarize(args.root, args.out, notes, args.name))


if __name__ == "__main__":
    main()
