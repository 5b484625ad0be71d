"""Data on the device (issue 15): where the training rows live while a GPU trains, tested on a CPU.

The decision (distill.device.place_data) with torch.cuda.mem_get_info monkeypatched; the
device-resident and pinned-staging code paths pointed at the CPU (Placement(..., cpu)), which must
give exactly today's batches and today's training; fake cuda:0 tensors (FakeTensorMode) for "no CPU
tensor per step"; the `cuda` tests at the end run only where a GPU is (benchmarks/gpu_check.sh)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import HostReads, base_config, cfg_of, train_interrupted
from distill import device
from distill.device import Placement
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)
GIB = 2**30


def _free(monkeypatch, free: int, total: int = 80 * GIB):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (free, total))


def test_the_split_goes_to_the_device_when_it_fits_in_the_share_of_free_memory(monkeypatch):
    _free(monkeypatch, 10 * GIB)
    fits = device.place_data(4 * GIB, GPU)  # 4 GiB <= 0.5 x 10 GiB
    assert fits.where == "device" and fits.free_bytes == 10 * GIB
    assert fits.record() == {"data": "device", "data_split_bytes": 4 * GIB, "data_free_bytes": 10 * GIB,
                             "data_memory_share": 0.5, "data_on_device": "auto"}
    assert device.place_data(6 * GIB, GPU).where == "pinned"  # over half the free memory
    assert device.place_data(6 * GIB, GPU, share=0.7).where == "device"  # the share is the setting
    assert device.place_data(1, GPU, "never").where == "pinned"
    assert device.place_data(9 * GIB, GPU, "always").where == "device"  # over the share, under the free memory
    with pytest.raises(DistillError, match=r"train.data_on_device: always, but the packed training split "
                                           r"\(12,288.0 MiB\) is larger than the free memory of cuda:0"):
        device.place_data(12 * GIB, GPU, "always")
    for setting in ("auto", "always", "never"):  # a CPU trains where the rows are
        assert device.place_data(12 * GIB, CPU, setting).where == "cpu"
    assert "pinned buffers" in device.place_data(6 * GIB, GPU).describe()


def test_the_config_takes_the_setting_and_refuses_a_bad_share(tmp_path):
    raw = base_config(tmp_path)
    raw["train"].update(data_on_device="never", device_memory_share=0.25)
    t = cfg_of(raw).train
    assert (t.data_on_device, t.device_memory_share) == ("never", 0.25)
    for bad in ({"data_on_device": "sometimes"}, {"device_memory_share": 0.0}, {"device_memory_share": 1.5}):
        raw["train"].update({"data_on_device": "auto", "device_memory_share": 0.5} | bad)
        with pytest.raises(Exception, match=next(iter(bad))):
            cfg_of(raw)


def _splits(tmp_path, n=500, **raw_train):
    from distill.data.dataset import load_splits
    raw = base_config(tmp_path, n_train=n)
    raw["train"].update(raw_train)
    cfg = cfg_of(raw)
    return cfg, load_splits(cfg)


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index)  # the same rows, in the same order
        assert sorted(x.features) == sorted(y.features)
        assert all(torch.equal(x[n], y[n]) for n in x.features)
        for f in ("y", "weight", "soft"):
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None) == (v is None) and (u is None or torch.equal(u, v)), f


@pytest.mark.parametrize("where", ["device", "pinned"])
def test_device_resident_and_staged_batches_are_todays_batches_resumed_mid_epoch_too(tmp_path, where):
    from distill.data.loader import GroupedLoader, InMemoryLoader
    _, splits = _splits(tmp_path)
    for loader in (InMemoryLoader(splits.train, 64, 3),
                   GroupedLoader(splits.train, 64, 3).for_rank(1, 2)):  # with a rank's share (and its weightless rows)
        placed = loader.placed(Placement(where, CPU, splits.train.nbytes()))
        assert placed.place.where == where and loader.place is None
        for epoch in (0, 1):
            _same(list(loader.epoch(epoch)), list(placed.epoch(epoch)))
            for names in (["user", "price", "tags"], ["user", "item", "price", "tags", "intent", "dwell"]):
                _same(list(loader.narrowed(names).epoch(epoch, 3)), list(placed.narrowed(names).epoch(epoch, 3)))
            # resumed at batch 3: the tail of the uninterrupted epoch
            _same(list(placed.epoch(epoch))[3:], list(placed.epoch(epoch, 3)))
        _same(list(loader.ordered(100)), list(placed.ordered(100)))


def test_the_epoch_permutation_is_drawn_on_the_cpu_from_seed_and_epoch(tmp_path, monkeypatch):
    from distill.data import loader as loaders
    _, splits = _splits(tmp_path)
    drawn = []
    randperm = torch.randperm

    def spy(n, *args, **kwargs):
        drawn.append((kwargs["generator"].device, kwargs.get("device")))
        return randperm(n, *args, **kwargs)
    monkeypatch.setattr(torch, "randperm", spy)
    plain = loaders.InMemoryLoader(splits.train, 64, 3)
    placed = plain.placed(Placement("device", CPU, 0))
    rows = torch.cat([b.index for b in placed.epoch(2)])
    expected = randperm(len(splits.train), generator=torch.Generator().manual_seed(3 * 1_000_003 + 2))
    assert torch.equal(rows, expected)
    assert drawn == [(CPU, None)]  # a CPU generator, whatever the placement


def test_staging_alternates_two_buffer_sets_and_waits_before_reusing_one(tmp_path):
    """A set is written again only after the event recorded after its copies: with two sets, batch
    i+2 waits on batch i's event. On the CPU the event is a stand-in that counts the waits."""
    from distill.data.loader import Staging
    _, splits = _splits(tmp_path)
    s = Staging(CPU)
    waits = []

    class Event:
        def __init__(self, i):
            self.i = i

        def synchronize(self):
            waits.append(self.i)
    idxs = list(torch.arange(300).split(64))
    stage = s._stage

    def staged(slot, data, idx, names):
        batch, _ = stage(slot, data, idx, names)
        s.copied[slot] = Event(len(seen))
        seen.append(slot)
        return batch, s.copied[slot]
    seen: list[int] = []
    s._stage = staged
    batches = list(s.batches(splits.train, idxs, None))
    assert seen == [0, 1, 0, 1, 0] and waits == [0, 1, 2]  # batch 2 waited on batch 0, 3 on 1, 4 on 2
    bufs = s.buffers[0]["index"], s.buffers[1]["index"]
    assert bufs[0].data_ptr() != bufs[1].data_ptr()
    # each batch is a copy out of its buffer: a later batch written into the same set leaves it alone
    assert torch.equal(batches[0].index, idxs[0]) and torch.equal(batches[2].index, idxs[2])
    assert batches[0].y.data_ptr() not in {b.data_ptr() for buf in s.buffers for b in buf.values()}


def _forced(monkeypatch, where):
    """Make the run's placement `where` on the CPU: the device-resident / staging code paths, run here."""
    from distill import run
    real = device.place_data
    monkeypatch.setattr(run.devices, "place_data", lambda n, d, setting="auto", share=0.5:
                        Placement(where, CPU, n, 123, share, setting) if where != "cpu" else real(n, d, setting, share))


@pytest.mark.parametrize("mode", ["async", "sync", "offline", "async_hint", "async_gate"])
def test_training_with_the_rows_on_the_device_or_staged_is_bit_identical_on_a_cpu(tmp_path, monkeypatch, mode):
    from distill.run import train
    raw = base_config(tmp_path, n_train=400)
    if mode == "async_hint":  # the teacher's hidden layer cached by row number too
        raw["distillation"]["hint"] = {"weight": 0.5, "loss": "mse"}
    if mode == "async_gate":  # several teachers' caches (K, N), the gate trained on them
        del raw["teacher"]
        raw["teachers"] = {"pfd": {"hidden": [32, 16], "embedding_dim": 8},
                           "md": {"hidden": [32], "embedding_dim": 8, "features": "serving"}}
        raw["distillation"]["ensemble"] = {"type": "gate"}
    mode = mode.split("_")[0]
    raw["distillation"]["mode"] = mode
    raw["train"].update(epochs=2, checkpoint_every=None, baseline=mode == "sync")
    if mode == "offline":  # a teacher's probability column
        import numpy as np
        import pyarrow.parquet as pq
        t = pq.read_table(raw["data"]["train"])
        pq.write_table(t.append_column("soft", [1 / (1 + np.exp(-1.8 * t["intent"].to_numpy()))]), raw["data"]["train"])
        raw["distillation"]["soft_label"] = "soft"
    today = train(cfg_of(raw), output=tmp_path / "today", quiet=True)
    assert json.loads((today.path / "run.json").read_text())["data"] == "cpu"
    for where in ("device", "pinned"):
        _forced(monkeypatch, where)
        run = train(cfg_of(raw), output=tmp_path / where, quiet=True)
        info = json.loads((run.path / "run.json").read_text())
        assert info["data"] == where and info["data_split_bytes"] > 0 and info["data_memory_share"] == 0.5
        assert run.metrics == today.metrics, where
        assert _steps(run.path) == _steps(today.path)  # every loss term of every step


def _steps(path):
    rows = [json.loads(line) for line in (path / "steps.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_the_async_cache_rides_with_the_batch_when_it_stays_in_host_memory(tmp_path, monkeypatch):
    """With the rows staged and the cache in host memory, the student's soft labels are gathered by
    the batch's own index into the staging buffers (batch.soft), not looked up per step."""
    from distill import phases
    from distill.data.loader import InMemoryLoader
    from distill.run import build_member
    from distill.training.loop import Plan
    cfg, splits = _splits(tmp_path, n=300)
    loader = InMemoryLoader(splits.train, 64, 0).placed(Placement("pinned", CPU, 0))
    s = build_member(cfg, splits.encoders, "student")
    cache = torch.linspace(-2, 2, len(splits.train))
    seen = []
    real = phases.train_single

    def spy(member, loader, *a, soft=None, **k):
        seen.append([soft(b) for b in loader.narrowed(member.features).epoch(0)])
        return real(member, loader, *a, soft=soft, **k)
    monkeypatch.setattr(phases, "train_single", spy)
    phases.fit_student(s, cache, loader, None, splits.encoders.label, Plan(epochs=1, metric="auc"), lam=0.5)
    got = torch.cat(seen[0])
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0 * 1_000_003 + 0))
    assert torch.equal(got, cache[order])


def test_the_decision_is_logged_once_and_kept_for_run_json(tmp_path, monkeypatch):
    from distill.data.loader import InMemoryLoader
    from distill.run import place_loader
    cfg, splits = _splits(tmp_path, device="cuda", device_memory_share=0.25)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    n = splits.train.nbytes()
    _free(monkeypatch, 3 * n)  # over a quarter of the free memory: staged

    class Log:
        lines: list[str] = []

        def info(self, line):
            self.lines.append(line)
    info: dict = {}
    log = Log()
    placed = place_loader(cfg, InMemoryLoader(splits.train, 64, 0), log, info)
    assert placed.place.where == "pinned" and placed.data is splits.train  # nothing moved
    assert info == {"data": "pinned", "data_split_bytes": n, "data_free_bytes": 3 * n, "data_memory_share": 0.25,
                    "data_on_device": "auto"}
    assert len(log.lines) == 1 and "pinned buffers" in log.lines[0] and "0.25 of" in log.lines[0]


def test_streaming_moves_each_shuffle_buffer_once(tmp_path, monkeypatch):
    from distill.data import stream
    from distill.data.batch import Encoded
    from distill.data.dataset import load_splits
    raw = base_config(tmp_path, n_train=1000)
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(raw["data"]["train"]), raw["data"]["train"], row_group_size=100)
    raw["data"].update(streaming=True, shuffle_buffer=300, prefetch=1)
    raw["train"]["batch_size"] = 64
    cfg = cfg_of(raw)
    splits = load_splits(cfg)
    plain = stream.StreamingLoader(cfg, splits.encoders)
    moves = []
    to = Encoded.to
    monkeypatch.setattr(Encoded, "to", lambda self, d: moves.append(len(self)) or to(self, d))
    for where in ("device", "pinned"):
        moves.clear()
        decided = []
        monkeypatch.setattr(stream, "place_data", lambda n, d, s, sh, where=where: Placement(where, CPU, n, 10**9, sh, s))
        placed = plain.placed(CPU, "auto", 0.5, on_place=decided.append)
        for epoch in (0, 1):
            _same(list(plain.epoch(epoch)), list(placed.epoch(epoch)))
            _same(list(plain.epoch(epoch, 5)), list(placed.epoch(epoch, 5)))
        assert len(decided) == 1 and placed.place.where == where  # decided once, at the first buffer
        if where == "device":  # each buffer once (about 300 rows), never a batch (64)
            assert moves and min(moves) > 64 and len(moves) <= 4 * 4
        else:
            assert moves == []


FAKE_GATHER = textwrap.dedent("""
    # Run in a child: an unsupported op on fake cuda tensors in a CPU-only torch aborts the process.
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from conftest import HostReads, base_config, cfg_of, train_interrupted
    from distill.data.dataset import load_splits
    from distill.data.loader import InMemoryLoader
    from distill.device import Placement
    from pathlib import Path
    cfg = cfg_of(base_config(Path(sys.argv[1]), n_train=300))
    splits = load_splits(cfg)

    class Where(TorchDispatchMode):   # the device of every tensor an op makes
        def __init__(self):
            super().__init__()
            self.made = []
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    self.made.append((str(func), t.device.type))
            return out

    from distill.data import loader as loaders
    loaders.to_device = lambda t, d: t.to(d)   # fake tensors cannot be pinned (aten._pin_memory: NYI)
    gpu = torch.device("cuda", 0)
    with FakeTensorMode(allow_non_fake_inputs=True):
        loader = InMemoryLoader(splits.train, 64, 0).placed(Placement("device", gpu, splits.train.nbytes()))
        assert loader.data.device == gpu
        batches = loader.epoch(0)
        first = next(batches)           # the epoch's permutation is drawn (CPU) and moved here, once
        where = Where()
        with where:
            rest = list(batches)
        for b in [first, *rest]:
            for t in [*b.features.values(), b.y, b.index]:
                assert t.device == gpu, t.device
        cpu = [f for f, d in where.made if d != "cuda"]
        assert not cpu, cpu
        print(len(rest) + 1, "batches", len(where.made), "ops", "ok")
""")


def test_a_device_resident_split_makes_no_cpu_tensor_per_step(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_GATHER)
    r = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT / "tests")], capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    words = r.stdout.split()
    assert words[0] == "5" and words[-1] == "ok" and int(words[2]) > 0, r.stdout


# ----------------------------------------------------------------------------- on a GPU only

cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@needs_gpu
def test_cuda_resident_and_staged_batches_match_the_cpu_ones(tmp_path):
    from distill.data.loader import InMemoryLoader, Staging
    _, splits = _splits(tmp_path)
    plain = InMemoryLoader(splits.train, 64, 3)
    resident = plain.placed(Placement("device", GPU, splits.train.nbytes()))
    staged = plain.placed(Placement("pinned", GPU, splits.train.nbytes()))
    assert resident.data.device == GPU and staged.data.device == CPU
    torch.cuda.set_sync_debug_mode("error")  # a pageable copy or a host read per batch raises
    try:
        on_device = [list(resident.epoch(1, 2)), list(staged.epoch(1, 2))]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu = list(plain.epoch(1, 2))
    torch.cuda.synchronize()
    for batches in on_device:
        assert all(b.y.device == GPU and b.index.device == GPU for b in batches)
        _same(cpu, [_to_cpu(b) for b in batches])
    s = Staging(GPU)
    list(s.batches(splits.train, list(torch.arange(200).split(64)), None))
    assert all(buf.is_pinned() for slot in s.buffers for buf in slot.values())


def _to_cpu(b):
    from distill.data.batch import Batch
    move = lambda t: None if t is None else t.cpu()  # noqa: E731  (blocking: the values are read next)
    return Batch({n: t.cpu() for n, t in b.features.items()}, move(b.y), move(b.weight), move(b.index), move(b.soft))


@cuda
@needs_gpu
def test_cuda_training_staged_equals_resident_in_deterministic_mode(tmp_path, monkeypatch):
    from distill.run import train
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    raw = base_config(tmp_path)
    raw["distillation"]["mode"] = "async"
    raw["train"].update(device="cuda", deterministic=True)
    runs = {}
    for setting in ("always", "never"):
        raw["train"]["data_on_device"] = setting
        runs[setting] = train(cfg_of(raw), output=tmp_path / setting, quiet=True)
        info = json.loads((runs[setting].path / "run.json").read_text())
        assert info["data"] == {"always": "device", "never": "pinned"}[setting]
    assert runs["always"].metrics == runs["never"].metrics


def test_always_with_a_split_larger_than_the_gpu_is_one_line_and_exit_2_through_the_cli(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner
    from distill.cli import app
    raw = base_config(tmp_path)
    raw["train"].update(device="cuda", data_on_device="always")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    _free(monkeypatch, 1000)  # bytes: less than the split
    r = CliRunner().invoke(app, ["train", str(path), "--no-report"])
    assert r.exit_code == 2, r.output
    assert "train.data_on_device: always, but the packed training split" in r.output
    assert "larger than the free memory of cuda:0 (0.0 MiB); use auto or never" in r.output
    assert "Traceback" not in r.output


def test_forcing_the_placement_on_a_cpu_is_a_warning_not_a_change(tmp_path):
    from distill import recipes
    raw = base_config(tmp_path)
    raw["train"].update(device="cpu", data_on_device="never")
    assert any("train.data_on_device: never is ignored on cpu" in w for w in recipes.check(cfg_of(raw)))


@pytest.mark.parametrize("where", ["device", "pinned"])
def test_placed_batches_add_no_host_read_to_the_step_loop(tmp_path, monkeypatch, where):
    from distill import phases
    from distill.data.loader import InMemoryLoader
    from distill.run import build_member
    from distill.training.loop import Plan
    cfg, splits = _splits(tmp_path, n=640)
    loader = InMemoryLoader(splits.train, 32, 0).placed(Placement(where, CPU, 0))  # 20 steps
    members = [build_member(cfg, splits.encoders, n) for n in ("teacher", "student")]
    with HostReads() as reads:
        summary = phases.fit_together(*members, loader, None, splits.encoders.label, Plan(epochs=1, metric="auc", log_every=5),
                                      lam=0.5)
    assert summary["steps"] == 20
    assert reads.count <= 20 // 5 + 1, reads.count  # as with today's batches


def test_a_run_resumed_mid_epoch_with_the_rows_staged_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    from distill.run import train
    raw = base_config(tmp_path, n_train=640)
    raw["distillation"]["mode"] = "async"
    raw["train"].update(checkpoint_every=3, baseline=False)  # 5 steps an epoch: the cut falls mid-epoch
    whole = train(cfg_of(raw), output=tmp_path / "whole", quiet=True)
    _forced(monkeypatch, "pinned")
    train_interrupted(raw, tmp_path / "cut", steps=8)
    resumed = train(cfg_of(raw), output=tmp_path / "cut", quiet=True, resume=True)
    assert json.loads((resumed.path / "run.json").read_text())["data"] == "pinned"
    assert resumed.metrics == whole.metrics


@pytest.mark.parametrize("where", ["device", "pinned"])
def test_a_streamed_split_carries_a_host_cache_with_each_buffer(tmp_path, monkeypatch, where):
    from distill.data import stream
    from distill.data.dataset import load_splits
    import pyarrow.parquet as pq
    raw = base_config(tmp_path, n_train=700)
    pq.write_table(pq.read_table(raw["data"]["train"]), raw["data"]["train"], row_group_size=100)
    raw["data"].update(streaming=True, shuffle_buffer=250, prefetch=1)
    raw["train"]["batch_size"] = 64
    cfg = cfg_of(raw)
    splits = load_splits(cfg)
    monkeypatch.setattr(stream, "place_data", lambda n, d, s, sh: Placement(where, CPU, n, 10**9, sh, s))
    cache = torch.randn(700)
    loader = stream.StreamingLoader(cfg, splits.encoders).placed(CPU).with_soft(cache)
    batches = list(loader.epoch(1))
    assert sum(len(b) for b in batches) == 700
    for b in batches:
        assert torch.equal(b.soft, cache[b.index])  # each row's own cached logit, gathered with its buffer


def test_the_async_cache_stays_on_the_gpu_unless_it_does_not_fit_the_share(monkeypatch):
    from distill.data.loader import cache_home

    class Loader:
        place = None
    loader = Loader()
    assert cache_home(loader, GPU, 10 * GIB) == GPU  # unplaced (a teacher loaded before any epoch): where the model is
    _free(monkeypatch, 10 * GIB)
    loader.place = Placement("device", GPU, GIB)
    assert cache_home(loader, GPU, 9 * GIB) == GPU  # the split is on the device: its cache too
    loader.place = Placement("pinned", GPU, 20 * GIB, share=0.5)
    assert cache_home(loader, GPU, 4 * GIB) == GPU  # staged split, cache under half the free memory
    assert cache_home(loader, GPU, 6 * GIB) == CPU  # over it: host memory, gathered with the batch
    loader.place = Placement("pinned", GPU, 20 * GIB, setting="never")
    assert cache_home(loader, GPU, 1) == CPU  # never: no per-row data on the device
    assert cache_home(loader, CPU, 6 * GIB) == CPU


def test_under_nccl_the_cache_stays_on_the_device(monkeypatch):
    from distill.data.loader import cache_home

    class Loader:
        place = Placement("pinned", GPU, 20 * GIB, setting="never")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    assert cache_home(Loader(), GPU, 6 * GIB) == GPU  # all_reduce of a host tensor is not NCCL's


def test_tune_places_its_loader_as_train_does(tmp_path, monkeypatch):
    """distill tune's shared loader goes through run.place_loader: with the placement decided
    "device", its rows are on the device once (not copied per trial step); on a CPU, today's loader."""
    from distill.data.loader import placement_of
    from distill.tune import Shared
    cfg = cfg_of(base_config(tmp_path, n_train=200))
    today = Shared(cfg, tmp_path / "cache")
    assert placement_of(today.loader) is None and today.placement["data"] == "cpu"
    _forced(monkeypatch, "device")
    placed = Shared(cfg, tmp_path / "cache2")
    assert placement_of(placed.loader).where == "device" and placed.placement["data"] == "device"
    for a, b in zip(today.loader.epoch(0), placed.loader.epoch(0)):  # the same batches either way
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
