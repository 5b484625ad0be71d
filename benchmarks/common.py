"""What every benchmark shares: the command line, building distill inputs from arrays, mean ± std,
and writing results (Markdown + CSV + PNG) whole or not at all.

Every benchmark is `python -m benchmarks.NAME [--quick] [--out DIR]`. The full run writes
`benchmarks/results/NAME.{md,csv,png}` (committed); `--quick` is a small version for CI that checks the
direction of the effect, not the figures, and writes under `benchmarks/results/quick/` (ignored by git).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- command line


@dataclass
class Args:
    quick: bool
    out: Path


def parse_args(name: str, description: str, argv: Sequence[str] | None = None) -> Args:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="a small run for CI: checks the direction of the effect only")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: benchmarks/results, "
                   "or benchmarks/results/quick with --quick)")
    a = p.parse_args(argv)
    return Args(a.quick, a.out or (RESULTS / "quick" if a.quick else RESULTS))


def setup_torch() -> None:
    """One thread: the benchmarks must share a small machine, and tiny models gain nothing from more."""
    import torch
    torch.set_num_threads(1)


def main(name: str, description: str, run: Callable[[bool, Path], dict[str, Any]],
         check: Callable[[dict[str, Any]], list[str]], argv: Sequence[str] | None = None) -> int:
    """Run a benchmark; with --quick, fail (exit 1) when `check` finds the effect going the wrong way."""
    args = parse_args(name, description, argv)
    setup_torch()
    t0 = time.perf_counter()
    try:
        summary = run(args.quick, args.out)
    except RuntimeError as e:
        if "could not download" not in str(e):
            raise
        print(f"{name}: {e}", file=sys.stderr)  # offline: one line that says what is missing, no traceback
        return 2
    print(f"{name}: done in {time.perf_counter() - t0:.0f} s; results in {args.out}", file=sys.stderr)
    if args.quick:
        problems = check(summary)
        for p in problems:
            print(f"{name} --quick: FAILED: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


# ----------------------------------------------------------------------------- distill inputs


def numeric_table(blocks: dict[str, np.ndarray], label: np.ndarray, label_name: str = "y") -> pa.Table:
    """Columns `{prefix}{j}` for each (N, d) block, plus the label: one numeric column per input."""
    cols: dict[str, Any] = {}
    for prefix, x in blocks.items():
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        for j in range(x.shape[1]):
            cols[f"{prefix}{j}"] = x[:, j]
    cols[label_name] = np.asarray(label)
    return pa.table(cols)


def numeric_features(prefix: str, d: int, privileged: bool = False) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{j}", "type": "numeric", "privileged": privileged} for j in range(d)]


def encode_splits(cfg, train: pa.Table, valid: pa.Table | None = None, test: pa.Table | None = None):
    """distill's own encoders fitted on `train` (as `distill train` would), applied to every split.

    Passing the result as `distill.train(cfg, splits=...)` skips the Parquet round trip only; the
    encoders, models, losses and loops are the library's.
    """
    from distill.data.dataset import Encoders, Splits
    enc = Encoders.fit(cfg, train, "train")
    return Splits(enc, enc.encode(cfg, train, "train"),
                  None if valid is None else enc.encode(cfg, valid, "valid"),
                  None if test is None else enc.encode(cfg, test, "test"))


def write_parquet_splits(directory: Path, tables: dict[str, pa.Table]) -> dict[str, str]:
    import pyarrow.parquet as pq
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, t in tables.items():
        pq.write_table(t, directory / f"{split}.parquet")
        paths[split] = str(directory / f"{split}.parquet")
    return paths


# ----------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def pm(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


class Stopwatch:
    """`with Stopwatch() as w: ...; w.seconds`"""

    def __enter__(self) -> "Stopwatch":
        self.t0 = time.perf_counter()
        self.seconds = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- writing results


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def code_version() -> str:
    """The git commit the benchmark ran from (`+` when the working tree had uncommitted changes)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src", "benchmarks/*.py"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


CODE_VERSION = code_version()  # taken at start: the code that ran, even if the tree changes meanwhile


def environment_note() -> str:
    import platform

    import torch

    import distill
    return (f"Code: commit {CODE_VERSION}; distill {distill.__version__}, torch {torch.__version__}, Python "
            f"{platform.python_version()}, {torch.get_num_threads()} CPU thread(s) on a shared 2-core machine; "
            f"finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(out: Path, name: str, markdown: str, rows: list[dict[str, Any]], figure=None) -> list[Path]:
    """Write `name.md`, `name.csv` (one row per measurement) and `name.png` (if a figure is given)."""
    paths = []
    _atomic_write(out / f"{name}.md", markdown.encode())
    paths.append(out / f"{name}.md")
    if rows:
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        _atomic_write(out / f"{name}.csv", buf.getvalue().encode())
        paths.append(out / f"{name}.csv")
    if figure is not None:
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        _atomic_write(out / f"{name}.png", buf.getvalue())
        paths.append(out / f"{name}.png")
        import matplotlib.pyplot as plt
        plt.close(figure)
    return paths


def pyplot():
    """matplotlib with a non-interactive backend (benchmarks run headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ----------------------------------------------------------------------------- tune benchmarks (tune_*.py)


def defaults_and_tune(cfg, trials: int, seeds: int, work: Path) -> dict[str, Any]:
    """What a user gets from `distill compare CONFIG` (the config's own distillation settings) and
    from `distill tune CONFIG` (the choice on validation, retrained over the same seeds), both paired
    on test against the same baseline (same student, initialisation and data order per seed).
    Also: each seed's validation gain of tune's retrained choice, to tell a validation gain that holds
    from one that was the luck of the search; and tune's --explain table (what each privileged feature
    adds to the teacher)."""
    from distill.compare import compare
    from distill.tune import tune
    with Stopwatch() as w:
        defaults = compare(cfg, seeds=seeds, output=work / "compare", quiet=True)
    compare_seconds = w.seconds
    with Stopwatch() as w:
        tuned = tune(cfg, trials=trials, seeds=seeds, output=work / "tune", quiet=True, explain_features=True)
    metric = tuned["metric"]
    valid = []
    for k in range(seeds):
        m = json.loads((work / "tune" / "final" / f"seed_{cfg.train.seed + k}" / "metrics.json").read_text())
        valid.append(m["student"]["valid"][metric] - m["baseline"]["valid"][metric])
    return {"defaults": defaults, "tune": tuned, "metric": metric, "valid_gains": valid, "seed": cfg.train.seed,
            "compare_seconds": compare_seconds, "tune_seconds": w.seconds}


def no_harm(tuned: dict[str, Any]) -> list[str]:
    """The check of every tune benchmark: tune's choice is not worse than the baseline on test beyond noise."""
    v = tuned["compare"]["verdict"]
    if tuned.get("shipped") == "baseline":  # tune's guard handed over the student trained alone: no harm by construction
        return []
    if v["metrics"][v["primary"]]["verdict"] == "harm":
        return [f"tune's choice harms the student on test: {v['headline']}"]
    return []


def verdict_row(name: str, c: dict[str, Any], metric: str) -> list[str]:
    """One line of a comparison: baseline, student (mean ± std over seeds), paired gain [95%], verdict."""
    m = c["verdict"]["metrics"][metric]
    interval = f"{m['gain']:+.4f}" if m["low"] is None else f"{m['gain']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]"
    return [name, f"{c['baseline'][metric]['mean']:.4f} ± {c['baseline'][metric]['std']:.4f}",
            f"{c['student'][metric]['mean']:.4f} ± {c['student'][metric]['std']:.4f}", interval,
            m["verdict"] or "no verdict"]


def params_text(best: dict[str, Any]) -> str:
    if best["baseline"]:
        return "the baseline (λ = 0)"
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in best["params"].items())


def tune_rows(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV: per run (compare's defaults, tune's choice), role and metric, mean and std on test;
    then the paired gains with their intervals."""
    rows = []
    for run in ("defaults", "tune"):
        c = ev["defaults"] if run == "defaults" else ev["tune"]["compare"]
        for role in ("teacher", "baseline", "student"):
            rows += [{"run": run, "model": role, "metric": m, **c[role][m]} for m in c.get(role, {})]
        rows += [{"run": run, "model": "gain", "metric": m, "mean": e["gain"], "low": e["low"], "high": e["high"],
                  "verdict": e["verdict"]} for m, e in c["verdict"]["metrics"].items()]
    return rows


def tune_findings(ev: dict[str, Any]) -> str:
    """The table of compare's defaults vs tune's choice vs the baseline, and whether tune's
    validation gain held on test (Markdown)."""
    from distill.results import t_interval, verdict_word
    d, t = ev["defaults"], ev["tune"]
    c, best, metric = t["compare"], t["best"], ev["metric"]
    rows = [verdict_row(f"compare's defaults, {m}", d, m) for m in d["verdict"]["metrics"]]
    rows += [verdict_row(f"tune's choice, {m}", c, m) for m in c["verdict"]["metrics"]]
    table = md_table(["", "baseline (test)", "student (test)", "student − baseline [95% interval]", "verdict"], rows)
    search = best["value"] - t["baseline_valid"]
    vg = ev["valid_gains"]
    test = c["verdict"]["metrics"][c["verdict"]["primary"]]
    confirmed = None  # does the retrained choice beat the baseline on validation beyond the seeds' noise?
    if len(vg) >= 3:
        g, lo, hi = t_interval(vg)
        confirmed = verdict_word(lo, hi, metric) == "gain"
        retrained = f"{g:+.4f} [{lo:+.4f}, {hi:+.4f}] ({verdict_word(lo, hi, metric)})"
    else:
        retrained = f"{np.mean(vg):+.4f} ({len(vg)} seed(s), no interval)"
    if best["baseline"]:
        holds = "The best trial is the baseline itself: no distillation setting beat it on validation, so tune hands over the baseline."
    elif abs(search) < 5e-4:
        holds = (f"The search found no real gain: its best trial is {search:+.5f} from the baseline on validation, a "
                 f"setting that leaves the student where it was; on test too ({test['verdict']}).")
    elif test["verdict"] == "gain":
        holds = "The validation gain holds on test."
    else:
        lost = confirmed is False or (confirmed is None and np.mean(vg) < search / 2)
        why = ("retrained over seeds, the choice does not beat the baseline on validation beyond the noise either: the "
               "search's margin was the luck of one seed among many trials (selection on a noisy validation metric)"
               if lost else "it holds on validation over seeds but does not carry over to test beyond the noise")
        holds = f"The validation gain does **not** hold on test ({test['verdict']}): {why}."
    if t.get("shipped") == "baseline" and not best["baseline"]:
        holds += (" Retrained, its mean validation gain is not positive, so tune's guard ships the baseline "
                  "(best.yaml trains the student alone).")
    return f"""{table}
**Search** ({t['trials']} trials, validation {metric}, seed {ev['seed']}): the baseline
{t['baseline_valid']:.4f}; best trial {best['number']} {best['value']:.4f} ({search:+.4f}): {params_text(best)}.
Tune's choice retrained over {len(vg)} seeds, student − baseline on **validation**: {retrained}; on **test**: {test['gain']:+.4f}.
{holds}
{explain_table(t.get("explain"))}"""


def explain_table(rows: list[dict[str, Any]] | None) -> str:
    """`distill tune --explain`'s table (tune.explain), or nothing when the teacher reads no privileged feature."""
    if not rows:
        return ""
    r0 = rows[0]
    table = md_table(["privileged feature", f"drop in the teacher's validation {r0['metric']} when shuffled", "95% interval"],
                     [[r["feature"], f"{r['drop']:+.4f}", "" if r["low"] is None else f"[{r['low']:+.4f}, {r['high']:+.4f}]"]
                      for r in rows])
    return (f"\n**What each privileged feature adds to the teacher** (`--explain`: the search's teacher, validation "
            f"{r0['metric']} {r0['intact']:.4f}, with one column shuffled, {r0['repeats']} shuffles; no retraining):\n\n{table}")


def tune_benchmark(out: Path, name: str, make_config: Callable[[Path], Any], trials: int, seeds: int,
                   markdown: Callable[[dict[str, Any]], str], quick: bool) -> dict[str, Any]:
    """Run `defaults_and_tune` on the config `make_config(data_dir)` writes (in a temporary
    directory), time it, and write `name`.md/.csv with `markdown(evidence)`."""
    import torch
    with tempfile.TemporaryDirectory() as tmp, Stopwatch() as total:
        cfg = make_config(Path(tmp) / "data")
        ev = defaults_and_tune(cfg, trials, seeds, Path(tmp))
    ev.update(seconds=total.seconds, capability=torch.backends.cpu.get_cpu_capability(), quick=quick,
              trials_asked=trials, seeds=seeds)
    write_results(out, name, markdown(ev), tune_rows(ev))
    return ev


def teacher_line(c: dict[str, Any]) -> str:
    """How far the teacher is ahead of the baseline on test (what distillation could pass on)."""
    v = c["verdict"]
    e = v["metrics"][v["primary"]]
    if "teacher_gain" not in e:
        return ""
    ahead = f"{e['teacher_gain']:+.4f}" + ("" if e["teacher_low"] is None else f" [{e['teacher_low']:+.4f}, {e['teacher_high']:+.4f}]")
    return f"The teacher − baseline on test {v['primary']}: {ahead} (compare's defaults)."


def tune_footer(ev: dict[str, Any]) -> str:
    return (f"Wall time: {ev['seconds']:.0f} s (compare's defaults {ev['compare_seconds']:.0f} s, tune {ev['tune_seconds']:.0f} s); "
            f"`torch.backends.cpu.get_cpu_capability()` = `{ev['capability']}`; run under `nice -n 5`. {environment_note()}\n")
