"""Data-parallel training on torch.distributed, on the CPU over loopback (gloo), no GPU needed.

Two processes under torchrun train like one (the global batch is the same, so the student's AUC
matches); metrics are computed over predictions gathered from every rank; a rank that dies makes
the whole job fail within a bounded time, and its checkpoints resume under another world size.
"""
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from conftest import cfg_of
from distill import distributed
from distill.data.batch import Encoded
from distill.data.loader import InMemoryLoader
from distill.demo import DEMO_CONFIG, make_log
from distill.errors import DistillError
from distill.run import load_run, train

TOLERANCE = 0.005  # the bound on |AUC(2 processes) − AUC(1 process)|


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A reduced demo (the PFD impression log, 4k training rows) with its config, small models."""
    d = tmp_path_factory.mktemp("dist")
    for name, n, seed in (("train", 4000, 1), ("valid", 1500, 2), ("test", 1500, 3)):
        pq.write_table(make_log(n, seed, n_users=400, n_items=150), d / f"{name}.parquet", row_group_size=500)
    raw = yaml.safe_load(DEMO_CONFIG.replace("{data}", str(d)))
    raw["teacher"].update(hidden=[32, 16], dropout=0.0)  # no dropout: the same updates can be compared
    raw["student"]["hidden"] = [16]
    # shared tables (one DDP over teacher and student must reduce each once) and a λ schedule
    raw["distillation"].update(share_embeddings=True, separate_embeddings=["user_id"],
                               schedule={"type": "linear", "steps": 20})
    raw["train"].update(epochs=2, batch_size=256, lr=0.003, baseline=False, threads=1)
    return d, raw


def write_config(d, raw, name):
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def torchrun(config, *args, env=None, timeout=120):
    """`torchrun --standalone --nproc_per_node=2 -m distill train CONFIG ...` (the same interpreter)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "distill", "train", str(config), "-q", *args]
    full_env = os.environ | {"OMP_NUM_THREADS": "1"} | (env or {})
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    return r, time.time() - t0


def student_auc(path):
    return json.loads((path / "metrics.json").read_text())["student"]["test"]["auc"]


def steps(path):
    return [json.loads(line) for line in (path / "steps.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(demo):
    d, raw = demo
    single = train(cfg_of(raw), output=d / "single", quiet=True)
    r, _ = torchrun(write_config(d, raw, "sync"), "--output", str(d / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run written to") == 1  # rank 0 speaks for the job
    two = d / "two"
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert json.loads((two / "run.json").read_text())["shared_tables"]
    assert abs(student_auc(two) - single.metrics["student"]["test"]["auc"]) < TOLERANCE
    # batch_size is the global batch: the same number of optimizer steps whatever the world size
    assert len(steps(two)) == len(steps(single.path))
    # ... and the same updates: DDP's averaged gradient of two half batches is the global batch's
    from safetensors.torch import load_file
    for role in ("teacher", "student"):
        ours, theirs = load_file(two / f"{role}.safetensors"), load_file(single.path / f"{role}.safetensors")
        assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < 1e-3
    assert not (d / "two.partial").exists()


def test_a_killed_rank_fails_the_job_and_its_checkpoints_resume_in_one_process(demo):
    d, raw = demo
    # async on the streamed split (row groups): the teacher phase, the soft labels each rank computes
    # for its slices and sums with the others', then the student
    raw = raw | {"distillation": raw["distillation"] | {"mode": "async", "share_embeddings": False},
                 "data": raw["data"] | {"streaming": True, "shuffle_buffer": 1000},
                 "train": raw["train"] | {"checkpoint_every": 5}}
    reference = train(cfg_of(raw), output=d / "async_single", quiet=True)
    n_steps = len(steps(reference.path))  # 16 per epoch: 32 teacher steps, then 32 student steps
    config = write_config(d, raw, "async")
    # rank 1 exits abruptly at its 40th batch: the student phase, after the soft labels were gathered
    r, seconds = torchrun(config, "--output", str(d / "killed"), env={"DISTILL_TEST_EXIT": "1:40"})
    assert r.returncode != 0
    assert seconds < 60, f"the job took {seconds:.0f}s to fail"
    assert re.search(r"Root Cause[\s\S]*rank\s*:\s*1 [\s\S]*exitcode\s*:\s*3", r.stderr), r.stderr[-3000:]
    assert not (d / "killed").exists()  # nothing published half-done
    assert list((d / "killed.partial" / "checkpoints").glob("ckpt-*.pt"))

    # positions are saved in global batches, so one process can continue what two started
    r = subprocess.run([sys.executable, "-m", "distill", "train", str(config), "-q", "--resume", str(d / "killed")],
                       capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = steps(d / "killed")
    assert sorted((s["phase"], s["step"]) for s in resumed) == sorted((s["phase"], s["step"]) for s in steps(reference.path))
    assert len(resumed) == n_steps
    assert abs(student_auc(d / "killed") - reference.metrics["student"]["test"]["auc"]) < TOLERANCE


# ----------------------------------------------------------------------------- in-process ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, run_dir: str, out_dir: str) -> None:
    """One of two ranks on loopback: metrics of a trained student over gathered predictions, the
    sharded loader's first batch, a gather of uneven parts, and an error raised on rank 0
    reaching rank 1."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # a bug here fails the test, never hangs it
    torch.set_num_threads(1)
    from distill.training.common import evaluate
    run = load_run(run_dir)
    valid = run.encoders.encode(run.config, pq.read_table(run.config.data.valid), "valid")
    result = {"metrics": evaluate(run.models["student"], valid, run.features["student"], run.encoders.label)}
    result["first_batch"] = next(distributed.shard(InMemoryLoader(valid, 100, seed=0)).epoch(0)).index.tolist()
    result["gathered"] = distributed.gather_rows(torch.arange(3 if rank == 0 else 2) + 10 * rank).tolist()

    def fail():
        raise DistillError("output exists")

    try:
        distributed.on_main(fail)
    except DistillError as e:
        result["error"] = str(e)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_metrics_over_gathered_predictions_equal_single_process_metrics(demo, tmp_path):
    d, raw = demo
    run_dir = d / "single"
    if not run_dir.is_dir():
        train(cfg_of(raw), output=run_dir, quiet=True)
    mp.spawn(_rank_main, args=(free_port(), str(run_dir), str(tmp_path)), nprocs=2, join=True)
    from distill.training.common import evaluate
    run = load_run(run_dir)
    valid = run.encoders.encode(run.config, pq.read_table(run.config.data.valid), "valid")
    expected = evaluate(run.models["student"], valid, run.features["student"], run.encoders.label)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # each rank predicted half the rows; after the gather both hold every row, in order
        assert got["metrics"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert got["gathered"] == [0, 1, 2, 10, 11]
        assert got["error"] == "output exists"  # rank 1 stops too, instead of waiting for rank 0
    # the loader run.train builds under torchrun gives each rank its half of the global batch
    halves = [json.loads((tmp_path / f"rank{rank}.json").read_text())["first_batch"] for rank in (0, 1)]
    assert halves[0] + halves[1] == InMemoryLoader(valid, 100, seed=0).order(0)[:100].tolist()
    assert len(halves[0]) == len(halves[1]) == 50


# ----------------------------------------------------------------------------- the sharded loader


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loader_splits_every_global_batch_and_sees_each_row_once(world):
    n, batch_size = 10, 4  # the last global batch has 2 rows: with 3 ranks, one rank gets none
    data = Encoded({"x": torch.arange(n)}, y=torch.zeros(n))
    inner = InMemoryLoader(data, batch_size, seed=5)
    ranks = [distributed.ShardedLoader(inner, r, world) for r in range(world)]
    for epoch in (0, 1):
        batches = [list(loader.epoch(epoch)) for loader in ranks]
        assert all(len(b) == len(inner) == 3 for b in batches)  # every rank takes every step
        seen = []
        for per_rank in zip(*batches):
            real = [b for b in per_rank if b.weight is None]
            for b in per_rank:
                if b.weight is not None:  # a rank left without rows: one row that adds nothing to the loss
                    assert len(b) == 1 and b.weight.sum() == 0
            rows = torch.cat([b.index for b in real])
            seen += rows.tolist()
        assert sorted(seen) == list(range(n))
        order = inner.order(epoch).tolist()
        assert seen == order  # rank slices in rank order rebuild each global batch
    # inference (the async teacher's soft labels): each rank a slice of every row, together all rows once
    assert sorted(i for loader in ranks for b in loader.ordered(batch_size=4) for i in b.index.tolist()) == list(range(n))
    # resuming mid-epoch starts at the same global batch on every rank
    assert [b.index.tolist() for b in ranks[0].epoch(1, start=2)] == [list(ranks[0].epoch(1))[2].index.tolist()]


def _silent_peer_main(rank: int, port: int, out_dir: str) -> None:
    """Rank 1 joins, then hangs (as a stuck process on another machine would, which torchrun there
    cannot see); rank 0's next collective must fail after DISTILL_DIST_TIMEOUT, not wait forever."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "DISTILL_DIST_TIMEOUT": "2"})
    assert distributed.setup() and distributed.world() == 2
    if rank == 1:
        time.sleep(6)
        os._exit(0)
    t0 = time.time()
    try:
        distributed.barrier()
        outcome = "returned"
    except Exception as e:  # what run.train turns into its one-line error
        failure = distributed.peer_failure(e)
        outcome = str(failure) if failure else f"unexplained {type(e).__name__}: {e}"
    (Path(out_dir) / "rank0.json").write_text(json.dumps({"outcome": outcome, "seconds": time.time() - t0}))
    os._exit(0)  # the group is broken: leave without a teardown handshake


def test_a_silent_rank_fails_the_collective_after_the_timeout(tmp_path):
    mp.spawn(_silent_peer_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert got["outcome"].startswith("timed out waiting for another rank"), got["outcome"]
    assert 1.5 < got["seconds"] < 6, got
