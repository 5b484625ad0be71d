"""Speed and scale (issue 5): distill against a hand-written PyTorch loop, side by side in one run.

    python -m benchmarks.speed [--quick] [--rows N] [--stream-rows SMALL LARGE] [--table-rows N ...]
                               [--precision fp32 bf16] [--paper-rows N] [--repeats R]

Reference shape: 26 categorical features of 10,000 values with 16-dim embeddings, 13 numeric, plus
4 categorical and 4 numeric privileged ones; student MLP 256-128, teacher MLP 512-256-128 on all
features; batch 4,096; Adam. The hand loop (benchmarks/handloop.py) trains on tensors already in
memory; distill's runs *include* reading and encoding the Parquet file.

Sections, each a ratio measured in this one run:
1. throughput: hand loop (student / teacher / sync) vs distill (student alone, sync PFD with shared
   embeddings, async with the teacher's soft labels cached), at each train.precision (fp32, and bf16
   mixed precision with a bf16 hand loop beside it for reference); the yardstick is the float32 hand loop;
1b. the PFD paper's regime: sync / async wall when embedding updates dominate the step;
2. streaming: data.streaming on a small and a large Parquet file: samples/s and peak resident memory
   (each in its own process, VmHWM; default 1M and 20M rows, files written in chunks);
3. large tables: one hashed feature with 10^5..10^7 rows, step time and peak memory, dense vs
   row-wise (train.sparse_embeddings) updates.
Results go to benchmarks/results/speed.{md,csv} with the machine's description.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.ctrdata import N_CAT, N_NUM, features, make_arrays, write_parquet
from benchmarks.handloop import hand_train

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"CPU capability {_capability()}, Python {platform.python_version()}, load average {load:.2f} at the end")


def _capability() -> str:
    """torch.backends.cpu.get_cpu_capability() and the bf16 flags of /proc/cpuinfo: whether bf16
    autocast is native here (on an AVX2-only CPU it ran 12x slower than fp32)."""
    from distill.device import cpu_capability
    return cpu_capability()


def distill_config(train_path: str, mode: str, batch: int = 4096, **extra) -> dict:
    raw = {
        "data": {"train": train_path},
        "task": {"type": "binary", "label": "y"},
        "features": features(extra.pop("hash_buckets", None)),
        "teacher": {"model": "dnn", "hidden": [512, 256, 128], "embedding_dim": 16},
        "student": {"model": "dnn", "hidden": [256, 128], "embedding_dim": 16},
        "distillation": {"mode": mode, "share_embeddings": mode == "sync"},
        "train": {"epochs": 1, "batch_size": batch, "lr": 1e-3, "early_stopping": None, "baseline": False},
    }
    for key, value in extra.items():
        raw[key].update(value)
    return raw


def distill_run(raw: dict, out: Path) -> dict:
    """Train through the public API; returns load seconds and per-phase wall seconds."""
    from distill import config_from_dict, train
    run = train(config_from_dict(raw), output=out, overwrite=True, quiet=True)
    info = json.loads((run.path / "run.json").read_text())
    return {"load": info["load_seconds"], "rows": info["rows"]["train"],
            **{k: v["wall_seconds"] for k, v in info["phases"].items()},
            **{f"{k}_soft": v.get("soft_label_seconds", 0.0) for k, v in info["phases"].items()}}


def throughput_once(path: Path, t: dict[str, torch.Tensor], tmp: Path, precisions: tuple[str, ...]) -> list[dict]:
    """One side-by-side round: the hand loops, then distill's runs, ratios taken within the round.
    Every ratio's yardstick is the float32 hand loop (the issue's); with bf16, distill runs with
    train.precision: bf16 and a bf16 hand loop is shown beside it, so the lever's share is visible."""
    args = (t["cat"], t["num"], t["pcat"], t["pnum"], t["y"], 10_000)
    hand = {kind: hand_train(kind, *args) for kind in ("student", "teacher", "sync")}
    out = [
        {"what": "hand loop, student alone (tensors in memory)", "samples_per_s": hand["student"]},
        {"what": "hand loop, teacher alone (tensors in memory)", "samples_per_s": hand["teacher"]},
        {"what": "hand loop, sync PFD (tensors in memory)", "samples_per_s": hand["sync"]},
    ]
    for precision in precisions:
        tag = "" if precision == "fp32" else f", {precision}"
        extra = {"precision": precision}
        if precision != "fp32":
            for kind in ("student", "sync"):
                out.append({"what": f"hand loop, {kind}{tag} autocast (for reference)",
                            "samples_per_s": hand_train(kind, *args, bf16=True)})
        alone = distill_run(distill_config(str(path), "none", train={"baseline": True, **extra}), tmp / "none")
        sync = distill_run(distill_config(str(path), "sync", train=extra), tmp / "sync")
        # with its own baseline: the student-phase ratio compares two phases of one process
        asyn = distill_run(distill_config(str(path), "async", train={"baseline": True, **extra}), tmp / "async")
        n = alone["rows"]
        d_student = n / (alone["load"] + alone["baseline"])
        d_sync = n / (sync["load"] + sync["sync"])
        sync_wall = sync["load"] + sync["sync"]
        async_wall = asyn["load"] + asyn["teacher"] + asyn["student"]
        student_phase = n / (asyn["student"] - asyn["student_soft"])
        out += [
            {"what": f"distill{tag}, student alone (Parquet read + encode included)", "samples_per_s": d_student,
             "ratio": d_student / hand["student"], "goal": ">= 1.0x hand student"},
            {"what": f"distill{tag}, sync PFD, shared embeddings (Parquet included)", "samples_per_s": d_sync,
             "ratio": d_sync / hand["sync"], "goal": ">= 1.5x hand sync"},
            {"what": f"distill{tag}, sync wall / async wall (same data, epochs)", "ratio": sync_wall / async_wall, "goal": "<= 0.55"},
            {"what": f"distill{tag}, async student phase (cached soft labels) / student alone (same run)",
             "samples_per_s": student_phase, "ratio": student_phase / (n / asyn["baseline"]), "goal": ">= 0.95"},
        ]
    return out


def throughput(rows: int, tmp: Path, repeats: int, precisions: tuple[str, ...]) -> list[dict]:
    """`repeats` rounds; each number is the median over rounds, each ratio the median of the ratios
    measured within a round (a busy moment slows both sides of a round alike), with its range."""
    a = make_arrays(rows, seed=0)
    path = tmp / "ctr.parquet"
    write_parquet(a, path)
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    rounds = [throughput_once(path, t, tmp, precisions) for _ in range(repeats)]
    out = []
    for i, row in enumerate(rounds[0]):
        merged = dict(row)
        for key in ("samples_per_s", "ratio"):
            if key in row:
                values = [r[i][key] for r in rounds]
                merged[key] = float(np.median(values))
                if key == "ratio" and repeats > 1:
                    merged["range"] = f"{min(values):.2f}–{max(values):.2f}"
        out.append(merged)
    return out


def paper_regime(rows: int, tmp: Path) -> list[dict]:
    """sync / async wall where embeddings dominate the step, as in the PFD paper's setting (teacher =
    student architecture + privileged inputs; +11% sync vs +100% async): the same features hashed
    into 10^5-row tables with dense updates, MLP [64] for both models. Shared tables are updated once
    per sync step, while async updates them in each phase."""
    path = tmp / "paper.parquet"
    write_parquet(make_arrays(rows, seed=2), path)
    walls = {}
    for mode in ("none", "sync", "async"):
        raw = distill_config(str(path), mode, hash_buckets=100_000, train={"baseline": mode == "none"})
        raw["teacher"]["hidden"] = raw["student"]["hidden"] = [64]
        r = distill_run(raw, tmp / f"paper_{mode}")
        walls[mode] = r["load"] + sum(r[k] for k in ("baseline", "sync", "teacher", "student") if k in r)
    return [{"what": "embedding-dominated shape (10^5-row tables, MLP 64): sync wall / student-alone wall",
             "ratio": walls["sync"] / walls["none"], "goal": "paper: 1.11"},
            {"what": "embedding-dominated shape (10^5-row tables, MLP 64): sync wall / async wall",
             "ratio": walls["sync"] / walls["async"], "goal": "<= 0.55 (paper: 1.11 / 2.0)"}]


def write_big_parquet(path: Path, rows: int, chunk: int = 500_000) -> None:
    """Written in chunks so that making the file never needs it all in memory."""
    writer = None
    for start in range(0, rows, chunk):
        a = make_arrays(min(chunk, rows - start), seed=start)
        cols = {f"c{i}": a["cat"][:, i] for i in range(N_CAT)} | {f"n{i}": a["num"][:, i] for i in range(N_NUM)}
        cols |= {f"pc{i}": a["pcat"][:, i] for i in range(4)} | {f"pn{i}": a["pnum"][:, i] for i in range(4)}
        cols["y"] = a["y"].astype(np.int8)
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=131_072)
    writer.close()


CHILD = """
import json, sys, time
from distill import config_from_dict, train
raw = json.loads(sys.argv[1])
t0 = time.perf_counter()
run = train(config_from_dict(raw), output=sys.argv[2], overwrite=True, quiet=True)
info = json.loads((run.path / "run.json").read_text())
print(json.dumps({"wall": time.perf_counter() - t0, "phases": {k: v["wall_seconds"] for k, v in info["phases"].items()},
                  "load": info["load_seconds"], "rows": info["rows"]["train"],
                  # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and starts at the parent's size
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024}))
"""


def child(raw: dict, out: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(raw), str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def streaming(small: int, large: int, tmp: Path) -> list[dict]:
    out = []
    for rows in (small, large):
        path = tmp / f"stream{rows}.parquet"
        write_big_parquet(path, rows)
        valid = tmp / "stream_valid.parquet"
        if not valid.exists():
            write_big_parquet(valid, 20_000)
        raw = distill_config(str(path), "none", data={"streaming": True, "valid": str(valid), "shuffle_buffer": 262_144},
                             hash_buckets=10_000, train={"baseline": True})
        r = child(raw, tmp / f"srun{rows}")
        out.append({"what": f"streaming, student alone, {rows:,} rows", "samples_per_s": rows / r["phases"]["baseline"],
                    "peak_rss_mb": r["peak_rss_mb"], "fit_pass_s": r["load"]})
        path.unlink()
    out.append({"what": f"streaming throughput, {large:,} / {small:,} rows", "ratio": out[1]["samples_per_s"] / out[0]["samples_per_s"],
                "goal": ">= 0.9 (within 10%)"})
    return out


def large_tables(table_rows: list[int], tmp: Path, steps_rows: int = 81_920) -> list[dict]:
    """One categorical feature hashed into `n` buckets (the rest as usual): the cost of a step, as
    the median gap between steps in steps.jsonl (the first step, which also allocates the
    optimizer's state, reported on its own)."""
    a = make_arrays(steps_rows, seed=1)
    path = tmp / "tables.parquet"
    write_parquet(a, path)
    out = []
    for n in table_rows:
        for sparse in (False, True):
            raw = distill_config(str(path), "none", batch=4096, train={"baseline": True, "sparse_embeddings": sparse})
            raw["features"][0]["hash_buckets"] = n
            r = child(raw, tmp / f"t{n}{sparse}")
            seconds = [json.loads(line)["seconds"] for line in (tmp / f"t{n}{sparse}" / "steps.jsonl").read_text().splitlines()]
            out.append({"what": f"table of {n:,} rows, {'row-wise (sparse)' if sparse else 'dense'} updates",
                        "ms_per_step": 1000 * float(np.median(np.diff(seconds))), "first_step_ms": 1000 * seconds[0],
                        "peak_rss_mb": r["peak_rss_mb"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a minute or two (CI)")
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--stream-rows", type=int, nargs=2, default=[1_000_000, 20_000_000])
    ap.add_argument("--table-rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the throughput comparison (medians reported)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="train.precision values to measure distill at (bf16: mixed precision)")
    ap.add_argument("--paper-rows", type=int, default=163_840, help="rows for the embedding-dominated shape")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "paper", "streaming", "tables"])
    args = ap.parse_args()
    if args.quick:
        args.rows, args.stream_rows, args.table_rows, args.repeats = 40_960, [100_000, 200_000], [10_000, 1_000_000], 1
        args.paper_rows = 16_384
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "throughput" not in args.skip:
            rows += throughput(args.rows, tmp, args.repeats, tuple(args.precision))
        if "paper" not in args.skip:
            rows += paper_regime(args.paper_rows, tmp)
        if "streaming" not in args.skip:
            rows += streaming(*args.stream_rows, tmp)
        if "tables" not in args.skip:
            rows += large_tables(args.table_rows, tmp)
    for r in rows:
        print("  ".join(f"{k}={v:,.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    keys = ["what", "samples_per_s", "ms_per_step", "first_step_ms", "peak_rss_mb", "ratio", "range", "goal"]
    with open(RESULTS / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "" if v is None else (f"{v:,.0f}" if isinstance(v, float) and v >= 100 else f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["# Speed and scale", "", f"Machine: {machine()}.", f"Run: `python -m benchmarks.speed --rows {args.rows} "
             f"--stream-rows {args.stream_rows[0]} {args.stream_rows[1]} --table-rows {' '.join(map(str, args.table_rows))} "
             f"--repeats {args.repeats} --paper-rows {args.paper_rows} --precision {' '.join(args.precision)}`: medians over {args.repeats} rounds (range of the ratio beside it), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| what | samples/s | ms/step | first step (ms) | peak RSS (MB) | ratio | ratio range | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")
    print(f"written to {RESULTS / 'speed.md'}")


if __name__ == "__main__":
    main()
