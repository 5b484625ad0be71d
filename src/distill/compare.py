"""`compare`: the distilled student against the no-distillation baseline over several seeds.

Each seed trains teacher, student and baseline on the same data (encoded once); the baseline is the
same student with the same initialisation and data order, trained without the teacher. Reported
on test (or valid when there is no test split): mean ± std over seeds, the paired gain
student − baseline with its 95% interval and verdict, and the share of the teacher–baseline gap
the student closed (distill.results says how each is computed):
    gap_closed = (student − baseline) / (teacher − baseline)        (per metric, on the means)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from distill import outputs, results
from distill.config import Config, require_config
from distill.data.dataset import load_splits
from distill.errors import DistillError
from distill.run import prepare_output, publish, train
from distill.recipes import check


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def summarize(per_seed: list[dict[str, Any]], split: str, primary: str | None = None,
              predictions: list[dict[str, np.ndarray] | None] | None = None, task: str | None = None) -> dict[str, Any]:
    """Aggregate the metrics.json of each seed into compare.json's shape; `verdict` holds the paired
    gain's 95% interval, the verdict word and the gap closed per metric (distill.results)."""
    many = [r for r in per_seed[0] if r.startswith("teacher:")]  # several teachers: the ensemble is the reference
    per_seed = [results.with_reference(s) for s in per_seed]
    predictions = [results.with_reference(p) for p in predictions] if predictions else predictions
    roles = [r for r in ("teacher", "baseline", "student") if r in per_seed[0]]
    out: dict[str, Any] = {"split": split, "seeds": len(per_seed)}
    if many:
        out["teachers"] = {r: {m: _stats([s[r][split][m] for s in per_seed]) for m in per_seed[0][r][split]} for r in many}
    for role in roles:
        names = per_seed[0][role][split].keys()
        out[role] = {m: _stats([s[role][split][m] for s in per_seed]) for m in names}
    v = results.verdicts(per_seed, split, primary, predictions, task)
    if "baseline" in out and "student" in out:
        out["gain"] = {m: _stats([s["student"][split][m] - s["baseline"][split][m] for s in per_seed])
                       for m in out["student"] if m in out["baseline"]}
    if "teacher" in out and v:
        # null where the teacher is no better than the baseline beyond the noise (the ratio means nothing there)
        out["gap_closed"] = {m: v["metrics"][m]["gap_closed"] if m in v["metrics"] else None for m in out["student"]}
    if v:
        out["verdict"] = v
    return out


def to_markdown(summary: dict[str, Any], title: str = "distill compare") -> str:
    return results.markdown(summary, title)


def compare(cfg: Config, seeds: int = 5, output: str | Path | None = None, overwrite: bool = False,
            quiet: bool = False, retrieval: bool = False) -> dict[str, Any]:
    """Train seeds `train.seed`, `train.seed + 1`, ...; write compare.json and compare.md into
    `output` (default: `<cfg.output>/compare`). With `retrieval` (a two_tower student on grouped
    data) compare.json also holds the retrieval metrics per seed and their verdicts (retrieval.py)
    and compare.md their tables.

    >>> summary = compare(load_config("config.yaml"), seeds=5)     # doctest: +SKIP
    >>> summary["verdict"]["headline"], summary["gap_closed"]["auc"]
    """
    require_config(cfg)
    if seeds < 1:
        raise DistillError("--seeds: must be at least 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would write the same comparison
        raise DistillError("compare runs in one process; under torchrun, run `distill train` once per seed")
    if cfg.distillation.mode == "none":
        raise DistillError("distillation.mode: 'none' is the baseline itself; compare needs sync, async or offline")
    check(cfg)
    # beside train's run, not on it: `distill train CONFIG` then `distill compare CONFIG` both work
    output = Path(output) if output else default_output(cfg)
    partial = prepare_output(output, overwrite, kind="compare")
    try:
        splits = None
        if not cfg.distillation.teacher_checkpoint:
            splits = load_splits(cfg)  # read and encode once, train every seed on it
        per_seed = []
        for k in range(seeds):
            seed_cfg = cfg.model_copy(deep=True)
            seed_cfg.train.seed = cfg.train.seed + k
            seed_cfg.train.baseline = True
            if not quiet:
                print(f"— seed {seed_cfg.train.seed} ({k + 1}/{seeds})", flush=True)
            run = train(seed_cfg, output=partial / f"seed_{seed_cfg.train.seed}", quiet=quiet, splits=splits)
            per_seed.append(run.metrics)
        split = "test" if "test" in per_seed[0]["student"] else next(iter(per_seed[0]["student"]))
        few = seeds < results.MIN_SEEDS  # the bootstrap needs each seed's test predictions
        predictions = [results.read_predictions(partial / f"seed_{cfg.train.seed + k}") for k in range(seeds)] if few else None
        summary = summarize(per_seed, split, results.primary_metric(cfg), predictions, cfg.task.type)
        md = to_markdown(summary)
        if retrieval:
            from distill.retrieval import evaluate_retrieval, retrieval_markdown
            summary["retrieval"] = evaluate_retrieval(partial)
            md += "\n\n" + retrieval_markdown(summary["retrieval"], "distilled vs baseline two-tower student") + "\n"
        (partial / "compare.json").write_text(json.dumps(summary, indent=2))
        (partial / "compare.md").write_text(md)
        publish(partial, output)
    except BaseException:
        outputs.discard(partial)
        raise
    return summary


def default_output(cfg: Config) -> Path:
    """`<output>/compare`, as the demo writes it."""
    return Path(cfg.output) / "compare"
