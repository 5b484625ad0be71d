"""distill on a CUDA GPU against hand-written PyTorch loops on the same GPU (issue 15, "Speed").

On the reference CTR shape of benchmarks/speed.py (26 + 4 categorical tables of 10,000 rows, 13 + 4
numeric, teacher MLP 512-256-128, student 256-128, embedding 16), at each batch size and precision:

- hand loop, data on the host: each batch gathered on the CPU and copied to the GPU (what a user writes)
- hand loop, data on the GPU: the split copied once, batches gathered there (the ceiling)
- distill: sync PFD, student alone (the baseline phase), the async student phase (cached soft labels),
  each with its training rows where train.data_on_device: auto put them (recorded in the row); and the
  student alone again with data_on_device: never (each batch gathered on the host into pinned buffers
  and copied one ahead), against the same with the split on the device

Timings are wrapped in torch.cuda.synchronize; distill's are its phases' wall seconds (the phase
ends with a read of the loss terms, itself a sync). Peak GPU memory per row. Also: test AUC of the
sync student in bf16 against fp32 on the same data (goal: within 0.005).

    python -m benchmarks.gpu                          # on a GPU: writes benchmarks/results/gpu.md
    python -m benchmarks.gpu --dry-run --out /tmp/g.md    # on a CPU, tiny sizes: proves the script runs
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.ctrdata import VOCAB, make_arrays, write_parquet
from benchmarks.handloop import HandModel
from benchmarks.speed import distill_config, machine

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def hand_gpu(kind: str, t: dict[str, torch.Tensor], device: torch.device, batch: int, precision: str,
             resident: bool, steps: int, lam: float = 0.5) -> float:
    """One hand loop on `device`; returns samples/s. resident: the split on the device, else each
    batch gathered on the host (pinned) and copied with non_blocking."""
    torch.manual_seed(0)
    vocab = int(max(t["cat"].max(), t["pcat"].max())) + 1
    n_cat, n_num = t["cat"].shape[1], t["num"].shape[1]
    student = HandModel(n_cat, vocab, n_num, 16, [256, 128]).to(device)
    teacher = HandModel(n_cat + t["pcat"].shape[1], vocab, n_num + t["pnum"].shape[1], 16, [512, 256, 128]).to(device)
    models = {"student": [student], "sync": [teacher, student]}[kind]
    opt = torch.optim.Adam([p for m in models for p in m.parameters()], lr=1e-3)
    data = {k: v.to(device) for k, v in t.items()} if resident else \
        {k: v.pin_memory() if device.type == "cuda" else v for k, v in t.items()}
    n = len(t["y"])
    order = torch.randperm(n, device=device if resident else None)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync(device)
    t0 = time.perf_counter()
    for s in range(steps):
        lo = (s * batch) % max(1, n - batch + 1)
        idx = order[lo:lo + batch]
        b = {k: v.index_select(0, idx) for k, v in data.items()}
        if not resident:
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        with amp:
            zs = student(b["cat"], b["num"]).float()
            zt = teacher(torch.cat([b["cat"], b["pcat"]], 1), torch.cat([b["num"], b["pnum"]], 1)).float() \
                if kind == "sync" else None
        loss = F.binary_cross_entropy_with_logits(zs, b["y"])
        if kind == "sync":
            loss = (F.binary_cross_entropy_with_logits(zt, b["y"]) + (1 - lam) * loss
                    + lam * F.binary_cross_entropy_with_logits(zs, torch.sigmoid(zt.detach())))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def distill_phase(path: Path, mode: str, device: torch.device, batch: int, precision: str, out: Path,
                  data: str = "auto") -> dict:
    from distill import config_from_dict, train
    tf32 = precision == "tf32"
    extra = {"device": str(device), "precision": "fp32" if tf32 else precision, "tf32": tf32,
             "log_every": 50, "baseline": mode in ("none", "async"), "data_on_device": data}
    raw = distill_config(str(path), mode, batch=batch, train=extra)
    peak_reset(device)
    run = train(config_from_dict(raw), output=out, overwrite=True, quiet=True)
    info = json.loads((run.path / "run.json").read_text())
    phases = {k: v["wall_seconds"] for k, v in info["phases"].items()}
    rows = info["rows"]["train"]
    r = {"peak_mb": peak_mb(device), "rows": rows, "data": info.get("data", "?")}
    if mode == "sync":
        r["sync"] = rows / phases["sync"]
    if mode == "none":
        r["student"] = rows / phases["baseline"]
    if mode == "async":
        soft = info["phases"]["student"].get("soft_label_seconds", 0.0)
        r["async_student"] = rows / (phases["student"] - soft)
    return r


def auc_check(rows: int, device: torch.device, batch: int, tmp: Path, vocab: int) -> dict:
    """Test AUC of the sync student, fp32 against bf16, same data and seed."""
    from distill import config_from_dict, train
    for split, n, seed in (("train", rows, 10), ("valid", max(256, rows // 10), 11), ("test", max(256, rows // 10), 12)):
        write_parquet(make_arrays(n, seed=seed, vocab=vocab), tmp / f"auc_{split}.parquet")
    out = {}
    for precision in ("fp32", "bf16"):
        raw = distill_config(str(tmp / "auc_train.parquet"), "sync", batch=batch,
                             train={"device": str(device), "precision": precision, "epochs": 2, "log_every": 50})
        raw["data"].update(valid=str(tmp / "auc_valid.parquet"), test=str(tmp / "auc_test.parquet"))
        raw["train"]["early_stopping"] = {"patience": 2}
        run = train(config_from_dict(raw), output=tmp / f"auc_{precision}", overwrite=True, quiet=True)
        out[precision] = run.metrics["student"]["test"]["auc"]
    return out


def describe(device: torch.device) -> str:
    gpu = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, " if device.type == "cuda" else "no GPU (dry run), "
    return f"{gpu}{machine()}"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batches", default="4096,16384")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--steps", type=int, default=100, help="hand-loop steps per measurement")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script runs end to end")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.md")
    a = ap.parse_args(argv)
    if a.dry_run:
        device = torch.device("cpu")
        a.rows, a.batches, a.precisions, a.steps = 512, "256", "fp32", 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks.gpu: torch sees no CUDA device (use --dry-run on a CPU)")
        device = torch.device("cuda", 0)
    vocab = 100 if a.dry_run else VOCAB
    batches = [int(b) for b in a.batches.split(",")]
    precisions = a.precisions.split(",")
    lines = [f"# distill on a GPU against hand loops on the same GPU ({'dry run' if a.dry_run else 'measured'})", "",
             f"Machine: {describe(device)}.", "",
             f"Reference CTR shape (benchmarks/speed.py), {a.rows:,} rows; hand loops {a.steps} steps; "
             "samples/s (higher is better); distill includes no data loading (phase wall seconds). "
             "(data: ...) is where distill kept the training rows (run.json \"data\": device = the split copied to "
             "the GPU once, pinned = gathered on the host into pinned buffers and copied one batch ahead, cpu = no GPU).", "",
             "| batch | precision | what | samples/s | ratio | goal | peak GPU MiB |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        arrays = make_arrays(a.rows, seed=0, vocab=vocab)
        path = tmp / "ctr.parquet"
        write_parquet(arrays, path)
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        for batch in batches:
            for precision in precisions:
                torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
                hp = "bf16" if precision == "bf16" else "fp32"
                hand = {}
                for kind in ("student", "sync"):
                    for resident in (False, True):
                        peak_reset(device)
                        sps = hand_gpu(kind, t, device, batch, hp, resident, a.steps)
                        hand[kind, resident] = sps
                        where = "data on the GPU" if resident else "copying each batch"
                        lines.append(f"| {batch} | {precision} | hand loop, {kind}, {where} | {sps:,.0f} |  |  | "
                                     f"{_mb(peak_mb(device))} |")
                torch.backends.cuda.matmul.allow_tf32 = False
                r_sync = distill_phase(path, "sync", device, batch, precision, tmp / "sync")
                r_none = distill_phase(path, "none", device, batch, precision, tmp / "none")
                r_async = distill_phase(path, "async", device, batch, precision, tmp / "async")
                r_staged = distill_phase(path, "none", device, batch, precision, tmp / "staged", data="never")
                rows = [("distill, sync PFD", r_sync["sync"], hand["sync", False], ">= 1.5x copying hand sync", r_sync),
                        ("distill, sync PFD", r_sync["sync"], hand["sync", True], ">= 0.9x resident hand sync", r_sync),
                        ("distill, student alone", r_none["student"], hand["student", True],
                         ">= 1.0x resident hand student", r_none),
                        ("distill, async student phase", r_async["async_student"], hand["student", True],
                         "(vs resident hand student)", r_async),
                        ("distill, student alone, data_on_device never", r_staged["student"], r_none["student"],
                         "(vs distill student, data auto)", r_staged),
                        ("distill, student alone, data_on_device never", r_staged["student"], hand["student", False],
                         "(vs copying hand student)", r_staged)]
                for what, sps, ref, goal, r in rows:
                    lines.append(f"| {batch} | {precision} | {what} (data: {r['data']}) | {sps:,.0f} | {sps / ref:.2f} | "
                                 f"{goal} | {_mb(r['peak_mb'])} |")
                _write(a.out, lines + ["", "(incomplete: the run was still measuring)"])  # kept if a timeout cuts the rest
        aucs = auc_check(a.rows if a.dry_run else a.rows // 4, device, batches[0], tmp, vocab)
    lines += ["", f"Sync student test AUC: fp32 {aucs['fp32']:.4f}, bf16 {aucs['bf16']:.4f}, "
              f"difference {abs(aucs['fp32'] - aucs['bf16']):.4f} (goal: within 0.005)."]
    _write(a.out, lines)
    print("\n".join(lines))
    return a.out


def _write(out: Path, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)  # whole or not at all


def _mb(v: float | None) -> str:
    return "" if v is None else f"{v:,.0f}"


if __name__ == "__main__":
    main()
