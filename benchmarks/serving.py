"""Serving benchmark: what serving only the student buys, and what the HTTP service sustains.

In process (one thread): latency p50/p99 at batch 1 and throughput at batch 1,024 for the teacher
and the student in PyTorch, the exported student's graph alone (ONNX Runtime, TorchScript), and the
whole path a request takes (`ExportedModel.predict`: encoders + ONNX Runtime). Then `distill serve`
in a subprocess on 127.0.0.1 under a bounded loopback load (32 concurrent clients for 30 s, one row
per request): requests/s, p50/p99 latency, errors.

    python benchmarks/serving.py            # ~2 minutes on 2 cores
    python benchmarks/serving.py --quick    # ~30 s: smaller data, 5 s of load

Writes benchmarks/results/serving.{md,csv,json} with the machine it ran on. A benchmark, not a
test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from distill.config import load_config
from distill.data.batch import Encoded
from distill.demo import write_demo_data
from distill.run import Run, train
from distill.serving import ExportedModel
from distill.serving.export import export

HOST = "127.0.0.1"  # loopback only: the load never leaves the machine


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import onnxruntime
    return {"cpu": model, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine moves the numbers
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def timed(fn: Callable[[], Any], calls: int, warmup: int = 20) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out


def measure(name: str, one: Callable[[], Any], big: Callable[[], Any], big_rows: int, calls: int, seconds: float) -> dict[str, Any]:
    lat = timed(one, calls) * 1e3
    big()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        big()
        n += 1
    rate = n * big_rows / (time.perf_counter() - t0)
    row = {"what": name, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
           "rows_per_s_at_1024": float(rate)}
    print(f"  {name:<44} p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms  {rate:12,.0f} rows/s", flush=True)
    return row


def in_process(run: Run, exported: dict[str, ExportedModel], table, calls: int, seconds: float) -> list[dict[str, Any]]:
    enc: Encoded = run.encoders.encode(run.config, table, "valid", features=list(run.encoders.features), label=False)
    one, big = enc.batch(torch.arange(1)), enc.batch(torch.arange(1024))
    rows = []
    with torch.inference_mode():
        for role in ("teacher", "student"):
            m, names = run.models[role], run.features[role]
            b1, b1024 = one.select(names), big.select(names)
            rows.append(measure(f"{role} ({run.config.teacher.model if role == 'teacher' else run.config.student.model}), PyTorch eager",
                                lambda: m(b1), lambda: m(b1024), 1024, calls, seconds))
    for fmt, model in exported.items():
        i1 = {n: enc.features[n][:1].numpy() for n in model.names}
        i1024 = {n: enc.features[n][:1024].numpy() for n in model.names}
        rows.append(measure(f"student, exported graph ({'ONNX Runtime' if fmt == 'onnx' else 'TorchScript'})",
                            lambda: model.run_graph(i1), lambda: model.run_graph(i1024), 1024, calls, seconds))
    model = exported["onnx"]
    dict_row = [{n: table.column(n)[0].as_py() for n in model.names}]
    t1024 = table.slice(0, 1024)
    rows.append(measure("student, ExportedModel.predict (encode + ORT)",
                        lambda: model.predict(dict_row), lambda: model.predict(t1024), 1024, calls, seconds))
    return rows


async def _client(port: int, payloads: list[bytes], first: int, step: int, deadline: float,
                  latencies: list[float], errors: list[str]) -> None:
    """One keep-alive connection sending requests back to back until the deadline. Plain asyncio
    streams rather than an HTTP client library: on a 2-core machine the load generator shares the
    CPUs with the server, and a light one leaves more of them to what is measured."""
    reader, writer = await asyncio.open_connection(HOST, port)
    i = first
    try:
        while time.perf_counter() < deadline:  # bounded: every client stops at the deadline
            body = payloads[i % len(payloads)]
            t = time.perf_counter()
            writer.write(b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (HOST.encode(), len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                errors.append(f"HTTP {status}")
            i += step
    except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as e:
        errors.append(type(e).__name__)
    finally:
        writer.close()


async def _load(port: int, bodies: list[dict], clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    payloads = [json.dumps(b).encode() for b in bodies]
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(_client(port, payloads, k, clients, deadline, latencies, errors) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {"clients": clients, "seconds": elapsed, "requests": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def http_load(export_dir: Path, table, clients: int, seconds: float, threads: int) -> dict[str, Any]:
    import httpx
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "distill", "serve", str(export_dir), "--host", HOST, "--port", str(port), "--threads", str(threads),
           "--no-access-log"]  # stderr is a pipe nobody reads while the load runs: a line per request would fill it
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the service did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
        names = [f["name"] for f in json.loads((export_dir / "manifest.json").read_text())["serving"]]
        bodies = [{n: r[n] for n in names} for r in table.slice(0, 2000).to_pylist()]
        result = asyncio.run(_load(port, bodies, clients, seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["server"] = f"distill serve (uvicorn, 1 worker, ONNX Runtime, {threads} thread)"
    return result


def write_results(out: Path, info: dict[str, Any], rows: list[dict[str, Any]], http: dict[str, Any], notes: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps({"machine": info, "setup": notes, "in_process": rows, "http": http}, indent=2))
    with open(out / "serving.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["what", "p50_ms", "p99_ms", "rows_per_s_at_1024"])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
        w.writerow({"what": f"HTTP /predict, {http['clients']} clients, 1 row per request ({http['requests_per_s']:.0f} req/s, {http['errors']} errors)",
                    "p50_ms": f"{http['p50_ms']:.4f}", "p99_ms": f"{http['p99_ms']:.4f}", "rows_per_s_at_1024": ""})
    lines = [
        "# Serving benchmark", "",
        f"Machine: {info['cpu']}, {info['cores']} logical cores ({info['affinity']} usable), shared with other work "
        f"(load average {info['load_average_1min']} when the run ended); "
        f"Python {info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}; {info['date']}.",
        f"Setup: {notes['setup']}", "",
        "## In process (one thread)", "",
        "| what | p50 latency, batch 1 (ms) | p99 latency, batch 1 (ms) | throughput, batch 1,024 (rows/s) |",
        "|---|---:|---:|---:|",
        *[f"| {r['what']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rows_per_s_at_1024']:,.0f} |" for r in rows],
        "", "## HTTP service on loopback", "",
        "| server | clients | duration (s) | requests | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {http['server']} | {http['clients']} | {http['seconds']:.1f} | {http['requests']:,} | {http['requests_per_s']:,.0f} | "
        f"{http['p50_ms']:.2f} | {http['p99_ms']:.2f} | {http['errors']} |",
        "", f"Parameters: teacher {notes['teacher_parameters']:,}, student {notes['student_parameters']:,}. "
        "The load generator (Python asyncio, raw HTTP/1.1 keep-alive) runs on the same cores as the server, so the HTTP figures "
        "are a floor for this machine, not a ceiling for the service.",
        f"Reproduce: `python benchmarks/serving.py{' --quick' if notes['quick'] else ''}`.", "",
    ]
    (out / "serving.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data, fewer calls, 5 s of load")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=None, help="load duration (default 30, --quick 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    calls, bench_s = (300, 1.0) if args.quick else (2000, 3.0)
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        tmp = Path(tmp)
        n = 10_000 if args.quick else 40_000
        cfg_path = write_demo_data(tmp / "data", n_train=n, n_valid=5_000, n_test=2_000)
        cfg = load_config(cfg_path, {"train.epochs": 1, "train.baseline": False, "train.threads": args.threads})
        print(f"training the demo's teacher ({cfg.teacher.model}) and student ({cfg.student.model}) on {n:,} rows", flush=True)
        run = train(cfg, output=tmp / "run", quiet=True)
        exported = {fmt: ExportedModel(export(run, fmt, tmp / f"export-{fmt}"), threads=args.threads, trust_torchscript=True)
                    for fmt in ("onnx", "torchscript")}
        table = pq.read_table(tmp / "data" / "valid.parquet")
        print("in process:", flush=True)
        rows = in_process(run, exported, table, calls, bench_s)
        print(f"HTTP: {args.clients} clients for {seconds:.0f} s on {HOST}", flush=True)
        http = http_load(tmp / "export-onnx", table, args.clients, seconds, args.threads)
        print(f"  {http['requests_per_s']:,.0f} req/s, p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms, "
              f"{http['errors']} errors", flush=True)
        params = {r: sum(p.numel() for p in {id(p): p for p in run.models[r].parameters()}.values()) for r in ("teacher", "student")}
    notes = {"setup": f"the demo's PFD config ({cfg.teacher.model} teacher on 9 features, {cfg.student.model} student on "
                      f"7 serving features), trained 1 epoch on {n:,} synthetic rows; torch and ONNX Runtime limited to "
                      f"{args.threads} thread; {calls} timed calls at batch 1 after 20 warm-up calls; throughput over "
                      f"{bench_s:.0f} s of batch-1,024 calls; HTTP: {args.clients} concurrent clients for {seconds:.0f} s, "
                      "one row per POST /predict.",
             "quick": args.quick, "teacher_parameters": params["teacher"], "student_parameters": params["student"]}
    write_results(args.out, machine(), rows, http, notes)
    print(f"written to {args.out}/serving.md, .csv, .json")


if __name__ == "__main__":
    main()
