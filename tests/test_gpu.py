"""The GPU path, tested on a CPU-only machine: device resolution with torch.cuda monkeypatched,
precision choices, the host syncs of the step loop counted, and fake cuda:0 tensors (FakeTensorMode)
for inference; the `cuda` tests at the end run only where a GPU is (benchmarks/gpu_check.sh)."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import HostReads, base_config, cfg_of, train_interrupted
from distill import device
from distill.cli import app
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[1]


def _gpus(monkeypatch, n: int, local_rank: str | None = None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)


def test_device_resolution_follows_the_gpus_torch_sees(monkeypatch):
    _gpus(monkeypatch, 0)
    assert device.resolve("auto") == torch.device("cpu")
    with pytest.raises(DistillError, match="'cuda' asked for a GPU but torch sees no CUDA device"):
        device.resolve("cuda")
    _gpus(monkeypatch, 2)
    assert device.resolve("auto") == device.resolve("cuda") == torch.device("cuda", 0)
    assert device.resolve("cuda:1") == torch.device("cuda", 1)
    assert device.resolve("cpu") == torch.device("cpu")  # asked for explicitly: the CPU even with GPUs
    with pytest.raises(DistillError, match=r"'cuda:2' names GPU 2 but this machine has 2 \(cuda:0..cuda:1\)"):
        device.resolve("cuda:2")
    _gpus(monkeypatch, 2, local_rank="1")  # torchrun's second local process
    assert device.resolve("auto") == device.resolve("cuda") == torch.device("cuda", 1)
    _gpus(monkeypatch, 2, local_rank="3")
    with pytest.raises(DistillError, match="LOCAL_RANK=3 names GPU 3 but this machine has 2"):
        device.resolve("auto")
    with pytest.raises(DistillError, match="not one of auto, cpu, cuda, cuda:N"):
        device.resolve("gpu")
    assert device.backend(torch.device("cuda", 0)) == "nccl" and device.backend(torch.device("cpu")) == "gloo"


def test_a_missing_gpu_is_one_line_and_exit_2_through_the_cli(tmp_path):
    raw = base_config(tmp_path)
    raw["train"]["device"] = "cuda:99"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["train", str(path), "--no-report"])
    assert r.exit_code == 2, r.output
    gone = "names GPU 99 but this machine has" if torch.cuda.is_available() else "asked for a GPU but torch sees no CUDA device"
    assert f"train.device: 'cuda:99' {gone}" in r.output
    assert "Traceback" not in r.output
    raw["train"]["device"] = "gpu0"  # not a device name: the config itself is refused
    with pytest.raises(Exception, match="device"):
        cfg_of(raw)


def test_precision_auto_is_bf16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(device, "_cpu_flags", lambda: {"avx2", "fma"})
    assert device.resolve_precision("auto", cpu) == ("fp32", [])
    chosen, warnings = device.resolve_precision("bf16", cpu)  # asked for: kept, with a warning naming the CPU
    assert chosen == "bf16" and len(warnings) == 1 and "capability AVX2" in warnings[0]
    assert device.resolve_precision("fp32", cpu) == ("fp32", [])
    with pytest.raises(DistillError, match="fp16 needs a CUDA device"):
        device.resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")  # what torch says on Sapphire Rapids
    monkeypatch.setattr(device, "_cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert device.resolve_precision("auto", cpu) == ("bf16", [])
    assert device.cpu_capability() == "AVX512 (avx512_bf16, amx_bf16)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert device.resolve_precision("auto", torch.device("cuda", 0)) == ("fp32", [])
    assert device.resolve_precision("fp16", torch.device("cuda", 0)) == ("fp16", [])
    assert isinstance(device.grad_scaler("fp16", torch.device("cpu")), torch.amp.GradScaler)
    assert device.grad_scaler("bf16", torch.device("cpu")) is None


def test_sparse_embeddings_are_refused_with_nccl_at_config_time(tmp_path, monkeypatch):
    from distill import recipes
    raw = base_config(tmp_path)
    raw["train"].update(sparse_embeddings=True, device="cuda")
    _gpus(monkeypatch, 2, local_rank="0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistillError, match="NCCL .* cannot all-reduce sparse gradients"):
        recipes.check(cfg_of(raw))
    monkeypatch.setenv("WORLD_SIZE", "1")  # one GPU process: nothing to all-reduce
    recipes.check(cfg_of(raw))
    raw["train"]["device"] = "cpu"  # gloo all-reduces sparse gradients
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipes.check(cfg_of(raw))


def test_run_json_records_the_device_and_the_cpu_capability(tmp_path):
    import json
    from distill.run import train
    raw = base_config(tmp_path, n_train=200)
    raw["distillation"]["mode"] = "none"
    raw["train"].update(epochs=1, device="cpu")  # asked for: the CPU even on a machine with a GPU
    train(cfg_of(raw), output=tmp_path / "run", quiet=True)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["tf32"] is False
    assert info["cpu_capability"].startswith(torch.backends.cpu.get_cpu_capability())


@pytest.mark.parametrize("mode", ["sync", "none"])
def test_the_step_loop_reads_the_device_once_per_logging_interval(tmp_path, monkeypatch, mode):
    from distill import phases
    from distill.data.dataset import load_splits
    from distill.data.loader import InMemoryLoader
    from distill.run import build_member
    from distill.training.loop import Plan
    raw = base_config(tmp_path, n_train=640)
    raw["train"].update(batch_size=32, log_every=5)
    cfg = cfg_of(raw)
    splits = load_splits(cfg)
    loader = InMemoryLoader(splits.train, 32, 0)  # 20 steps per epoch
    plan = Plan(epochs=1, metric="auc", log_every=5)
    members = [build_member(cfg, splits.encoders, n) for n in (("teacher", "student") if mode == "sync" else ("baseline",))]
    with HostReads() as reads:
        if mode == "sync":
            summary = phases.fit_together(*members, loader, None, splits.encoders.label, plan, lam=0.5)
        else:
            summary = phases.fit_baseline(members[0], loader, None, splits.encoders.label, plan)
    assert summary["steps"] == 20
    # steps 0, 5, 10, 15 are logged (one read each), then the phase's end reads 16..19: 5 reads, not 20 x 4
    assert reads.count <= math.ceil(20 / 5) + 1, reads.count


def test_a_divergence_between_reads_still_names_its_step_and_term():
    from distill.training.loop import Pending
    from distill.training.log import RunLog
    p = Pending("student", log_every=10)
    for step in range(1, 6):
        bad = step == 3
        p.add(step, 0, 0.5, 1e-3, {"L_s": torch.tensor(float("nan") if bad else 0.7), "loss": torch.tensor(0.7)})
    with pytest.raises(DistillError, match="diverged at step 3: L_s is nan"):
        p.flush(RunLog(None, quiet=True))


FAKE_CUDA = textwrap.dedent("""
    # Run in a child: an unsupported op on fake cuda tensors in a CPU-only torch aborts the process.
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from torch._subclasses.fake_tensor import FakeTensorMode
    from conftest import HostReads, base_config, cfg_of, train_interrupted
    from distill.data.dataset import load_splits
    from distill.inference import predict_logits
    from distill.run import build_member
    from pathlib import Path
    raw = base_config(Path(sys.argv[1]), n_train=200)
    cfg = cfg_of(raw)
    splits = load_splits(cfg)
    for model in ("dnn", "dcn_v2", "deepfm", "wide_deep"):
        cfg.student.model = model
        m = build_member(cfg, splits.encoders, "student")
        m.module.requires_grad_(False)
        with FakeTensorMode(allow_non_fake_inputs=True):
            m.module.to("cuda:0")
            logits = predict_logits(m.module, splits.valid, m.features)   # the split stays on the CPU
            assert logits.device == torch.device("cuda", 0), logits.device
            assert logits.shape == (len(splits.valid),)
        print(model, "ok")
""")


def test_inference_on_fake_cuda_tensors_moves_every_batch_to_the_model(tmp_path):
    """Not covered under FakeTensorMode in a CPU-only torch (each aborts the process there): the
    backward pass and optimizer step (autograd needs a real CUDA device guard), the soft-label
    cache's index_put, and .numpy() (never allowed on a fake tensor). Those run in the `cuda` tests."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE_CUDA)
    r = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT / "tests")], capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["dnn", "ok", "dcn_v2", "ok", "deepfm", "ok", "wide_deep", "ok"]


def test_the_soft_label_cache_is_allocated_where_the_teacher_is(tmp_path):
    """On the meta device (shapes only, no data, like a GPU nothing can read from here)."""
    from distill.data.dataset import load_splits
    from distill.data.loader import InMemoryLoader
    from distill.member import Member
    from distill.training.asynchronous import cache_logits
    cfg = cfg_of(base_config(tmp_path, n_train=200))
    splits = load_splits(cfg)
    from distill.run import build_member
    t = build_member(cfg, splits.encoders, "teacher")
    t.module.to("meta")
    cache = cache_logits(Member("teacher", "teacher", t.module, t.features), InMemoryLoader(splits.train, 64, 0))
    assert cache.device.type == "meta" and cache.shape == (200,)


def test_checkpoint_rng_state_restores_from_both_formats():
    torch.manual_seed(3)
    state = device.rng_state()
    a = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    torch.manual_seed(3)
    old = torch.get_rng_state()  # a checkpoint written before the CUDA state was added
    b = torch.rand(3)
    device.set_rng_state(old)
    assert torch.equal(torch.rand(3), b)


def test_export_copies_a_non_float32_student_to_a_float32_cpu_model():
    from distill.serving.export import cpu_float32
    m = torch.nn.Linear(2, 1)
    assert cpu_float32(m) is m
    half = torch.nn.Linear(2, 1).to(torch.bfloat16)
    copy = cpu_float32(half)
    assert copy is not half and copy.weight.dtype == torch.float32 and half.weight.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- on a GPU only

cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _train_on_gpu(tmp_path, mode, model="dnn", **train):
    from distill.run import train as run_train
    raw = base_config(tmp_path)
    raw["distillation"]["mode"] = mode
    raw["student"]["model"] = model
    if mode == "offline":  # a teacher's probability column, as tests/test_training.py writes it
        import numpy as np
        import pyarrow.parquet as pq
        t = pq.read_table(raw["data"]["train"])
        pq.write_table(t.append_column("soft", [1 / (1 + np.exp(-1.8 * t["intent"].to_numpy()))]), raw["data"]["train"])
        raw["distillation"]["soft_label"] = "soft"
    raw["train"].update(device="cuda", **train)
    return run_train(cfg_of(raw), output=tmp_path / f"run-{mode}-{model}", quiet=True)


@cuda
@needs_gpu
@pytest.mark.parametrize("mode", ["sync", "async", "offline", "none"])
@pytest.mark.parametrize("model", ["dnn", "dcn_v2", "deepfm", "wide_deep", "two_tower"])
def test_cuda_every_mode_and_model_trains(tmp_path, mode, model):
    import json
    torch.cuda.set_sync_debug_mode("warn")
    try:
        run = _train_on_gpu(tmp_path, mode, model, log_every=10)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    info = json.loads((run.path / "run.json").read_text())
    assert info["device"] == "cuda:0" and info["gpu"]
    assert 0.0 <= run.metrics["student"]["test"]["auc"] <= 1.0
    assert all(p.device.type == "cpu" for p in run.models["student"].parameters())  # loaded back on the CPU


@cuda
@needs_gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_cuda_mixed_precision_trains_with_float32_weights(tmp_path, precision):
    run = _train_on_gpu(tmp_path, "sync", precision=precision, tf32=True)
    assert all(p.dtype == torch.float32 for p in run.models["student"].parameters())
    assert math.isfinite(run.metrics["student"]["test"]["auc"])


@cuda
@needs_gpu
def test_cuda_fp16_with_sparse_embeddings_steps_both_optimizers(tmp_path):
    run = _train_on_gpu(tmp_path, "none", precision="fp16", sparse_embeddings=True)
    assert math.isfinite(run.metrics["baseline"]["test"]["auc"])


@cuda
@needs_gpu
def test_cuda_resume_is_bit_identical_in_deterministic_mode(tmp_path, monkeypatch):
    import os
    from distill.run import train as run_train
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    raw = base_config(tmp_path)
    raw["train"].update(device="cuda", deterministic=True, checkpoint_every=3)
    whole = run_train(cfg_of(raw), output=tmp_path / "whole", quiet=True)
    train_interrupted(raw, tmp_path / "cut", steps=8)
    resumed = run_train(cfg_of(raw), output=tmp_path / "cut", quiet=True, resume=True)
    assert resumed.metrics == whole.metrics
    assert os.path.isdir(tmp_path / "cut")


@cuda
@needs_gpu
def test_cuda_run_exports_and_serves_on_the_cpu(tmp_path):
    from distill.serving.export import export
    run = _train_on_gpu(tmp_path, "sync")
    out = export(run.path, "onnx")  # the leak check compares the export with the CPU-loaded student
    assert (out / "manifest.json").is_file()


@cuda
@needs_gpu
def test_cuda_nccl_with_one_process(tmp_path, monkeypatch):
    import torch.distributed as dist
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        from distill import distributed
        x = torch.arange(4.0, device="cuda")
        dist.all_reduce(x)
        assert x.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert distributed.gather_rows(x).device.type == "cuda"
        run = _train_on_gpu(tmp_path, "sync")
        assert math.isfinite(run.metrics["student"]["test"]["auc"])
    finally:
        dist.destroy_process_group()


def test_the_gpu_benchmark_dry_run_executes_end_to_end_on_a_cpu(tmp_path):
    """benchmarks/gpu.py cannot be measured here; its --dry-run (CPU, tiny sizes) runs every code
    path that benchmarks/gpu_check.sh runs on a GPU, so the script is known to execute there."""
    from benchmarks import gpu
    out = gpu.main(["--dry-run", "--out", str(tmp_path / "gpu.md")])
    text = out.read_text()
    assert "(dry run)" in text and "CPU capability" in text and "incomplete" not in text
    for what in ("hand loop, sync, copying each batch", "hand loop, student, data on the GPU", "distill, sync PFD",
                 "distill, student alone", "distill, async student phase", "Sync student test AUC: fp32",
                 "distill, student alone, data_on_device never (data: cpu)", "distill, sync PFD (data: cpu)"):
        assert what in text, what


def test_precision_auto_trains_every_phase_of_async(tmp_path, monkeypatch):
    """auto reaches the soft-label pass resolved (it is not a precision autocast knows)."""
    from distill.run import train
    monkeypatch.setattr(device, "native_bf16", lambda d: False)  # an AVX2-only CPU: auto means fp32
    raw = base_config(tmp_path, n_train=200)
    raw["distillation"]["mode"] = "async"
    raw["train"].update(epochs=1, precision="auto")
    run = train(cfg_of(raw), output=tmp_path / "auto", quiet=True)
    raw["train"]["precision"] = "fp32"
    same = train(cfg_of(raw), output=tmp_path / "fp32", quiet=True)
    assert run.metrics == same.metrics  # auto on such a CPU is exactly fp32
