"""Ranking distillation within groups: the pairwise and listwise losses against hand computations,
the grouped loader, NDCG@k / recall@k, the config's refusals, and a run through the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import HostReads, base_config
from distill.cli import app
from distill.config import config_from_dict
from distill.data.batch import Encoded
from distill.data.loader import GroupedLoader, InMemoryLoader
from distill.errors import DistillError
from distill.losses import distill_loss, listwise_distill_loss, mixed_distill_loss, pairwise_distill_loss
from distill.metrics import compute, ranking_at_k
from distill.training import ranking

runner = CliRunner()
sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def bce(p: float, q: float) -> float:
    return -(p * math.log(q) + (1 - p) * math.log(1 - q))


# ----------------------------------------------------------------------------- pairwise


def test_pairwise_is_ranknet_cross_entropy_over_the_pairs_of_each_group():
    s = torch.tensor([0.5, -1.0, 2.0, 0.3, 0.1])
    t = torch.tensor([1.0, 0.0, -0.5, 2.0, 1.5])
    g = torch.tensor([7, 7, 7, 3, 3])  # pairs (0,1), (0,2), (1,2) and (3,4); never across groups
    T = 2.0
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    hand = np.mean([bce(sig((t[i] - t[j]).item() / T), sig((s[i] - s[j]).item() / T)) * T * T for i, j in pairs])
    assert pairwise_distill_loss(s, t, g, T).item() == pytest.approx(hand, rel=1e-6)


def test_pairwise_teacher_tie_targets_one_half_and_group_of_one_gives_zero():
    s, t = torch.tensor([1.0, -1.0]), torch.tensor([0.3, 0.3])  # teacher tie: target 1/2
    assert pairwise_distill_loss(s, t, torch.tensor([0, 0])).item() == pytest.approx(bce(0.5, sig(2.0)), rel=1e-6)
    single = pairwise_distill_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 5.0]), torch.tensor([0, 1]))
    assert single.item() == 0.0  # two groups of one: no pair


def test_pairwise_ignores_padding_rows_and_sampling_takes_a_subset():
    s, t, g = torch.tensor([0.2, 0.9, -0.4]), torch.tensor([1.0, -1.0, 0.0]), torch.tensor([0, 0, 0])
    base = pairwise_distill_loss(s, t, g)
    padded = pairwise_distill_loss(torch.cat([s, torch.tensor([5.0, 6.0])]), torch.cat([t, torch.tensor([-3.0, 3.0])]),
                                   torch.cat([g, torch.tensor([-1, -1])]))  # −1: no group, padding
    assert padded.item() == pytest.approx(base.item(), rel=1e-7)
    one = pairwise_distill_loss(s, t, g, max_pairs=1, generator=torch.Generator().manual_seed(0))
    each = [bce(sig(t[i].item() - t[j].item()), sig(s[i].item() - s[j].item())) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert min(abs(one.item() - e) for e in each) < 1e-6 and one.item() != pytest.approx(base.item())


# ----------------------------------------------------------------------------- listwise


def test_listwise_is_softmax_cross_entropy_per_group_averaged_over_groups():
    s = torch.tensor([0.5, -1.0, 2.0, 0.3, 0.1, 9.0])
    t = torch.tensor([1.0, 0.0, -0.5, 2.0, 1.5, -4.0])
    g = torch.tensor([7, 7, 7, 3, 3, 5])  # group 5 has one row: nothing to order, not counted
    T = 1.5

    def ce(ts, ss):
        pt = np.exp(np.array(ts) / T); pt /= pt.sum()
        ls = np.array(ss) / T; ls = ls - np.log(np.exp(ls).sum())
        return -(pt * ls).sum() * T * T

    hand = (ce([1.0, 0.0, -0.5], [0.5, -1.0, 2.0]) + ce([2.0, 1.5], [0.3, 0.1])) / 2
    assert listwise_distill_loss(s, t, g, T).item() == pytest.approx(hand, rel=1e-6)
    assert listwise_distill_loss(torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([0])).item() == 0.0


def test_listwise_permutation_and_padding_invariant():
    s, t, g = torch.randn(12), torch.randn(12), torch.tensor([0, 1, 2] * 4)
    base = listwise_distill_loss(s, t, g, 2.0)
    p = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert listwise_distill_loss(s[p], t[p], g[p], 2.0).item() == pytest.approx(base.item(), rel=1e-6)
    padded = listwise_distill_loss(torch.cat([s, torch.zeros(3)]), torch.cat([t, torch.ones(3)]),
                                   torch.cat([g, torch.tensor([-1, -1, -1])]), 2.0)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)
    assert pairwise_distill_loss(s[p], t[p], g[p]).item() == pytest.approx(pairwise_distill_loss(s, t, g).item(), rel=1e-6)


@pytest.mark.parametrize("loss", [pairwise_distill_loss, listwise_distill_loss])
def test_within_group_losses_reach_the_student_only(loss):
    s = torch.randn(6, requires_grad=True)
    t = torch.randn(6, requires_grad=True)
    loss(s, t, torch.tensor([0, 0, 0, 1, 1, 1])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher is detached inside the loss
    # shifting a whole group's student scores changes nothing: only the order within it counts
    s2 = s.detach() + torch.tensor([3.0, 3.0, 3.0, -2.0, -2.0, -2.0])
    assert loss(s2, t, torch.tensor([0, 0, 0, 1, 1, 1])).item() == pytest.approx(
        loss(s.detach(), t, torch.tensor([0, 0, 0, 1, 1, 1])).item(), rel=1e-5)


def test_mixed_loss_weights_the_terms_and_pointwise_alone_is_distill_loss():
    s, t, g = torch.randn(8), torch.randn(8), torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    parts = mixed_distill_loss(s, t, "binary", g, {"pointwise": 1.0, "listwise": 0.5}, 2.0)
    expect = distill_loss(s, t, "binary", 2.0) + 0.5 * listwise_distill_loss(s, t, g, 2.0)
    assert parts["L_d"].item() == pytest.approx(expect.item(), rel=1e-6)
    assert set(parts) == {"L_d", "L_pointwise", "L_listwise"}
    alone = mixed_distill_loss(s, t, "binary", g, {"pointwise": 1.0}, 2.0)["L_d"]
    assert torch.equal(alone, distill_loss(s, t, "binary", 2.0))


# ----------------------------------------------------------------------------- grouped loader


def encoded(groups: list[int]) -> Encoded:
    n = len(groups)
    return Encoded({"x": torch.arange(n, dtype=torch.float32)[:, None]}, torch.zeros(n), None, np.array(groups, np.int64))


def test_grouped_loader_keeps_groups_whole_and_orders_by_seed_and_epoch():
    r = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), r.integers(1, 12, 40))  # groups of 1..11 rows
    groups = np.r_[groups, np.full(30, 99)]  # and one group larger than a batch
    r.shuffle(groups)
    loader = GroupedLoader(encoded(groups.tolist()), batch_size=16, seed=3)
    for epoch in (0, 1):
        seen = []
        for b in loader.epoch(epoch):
            rows = b.index.numpy()
            g = groups[rows]
            assert len(rows) <= 16 or len(set(g)) == 1  # over the size only as a group of its own
            seen.extend(rows.tolist())
            for k in set(g):  # every row of each of its groups is in this batch
                assert (groups == k).sum() == (g == k).sum()
        assert sorted(seen) == list(range(len(groups)))  # every row once per epoch
    again = GroupedLoader(encoded(groups.tolist()), batch_size=16, seed=3)
    first = [b.index.tolist() for b in loader.epoch(1)]
    assert [b.index.tolist() for b in again.epoch(1)] == first  # (seed, epoch) alone decide
    assert [b.index.tolist() for b in again.epoch(1, start=2)] == first[2:]  # resumable mid-epoch
    assert [b.index.tolist() for b in loader.epoch(2)] != first


def test_grouped_loader_shards_by_whole_groups_across_ranks():
    groups = np.repeat(np.arange(25), 1 + np.arange(25) % 6)
    data = encoded(groups.tolist())
    world = 3
    loaders = [GroupedLoader(data, 40, seed=0).for_rank(r, world) for r in range(world)]
    per_rank = [list(lo.epoch(0)) for lo in loaders]
    assert len({len(p) for p in per_rank}) == 1  # every rank steps the same number of times
    seen = []
    for batches in zip(*per_rank):
        owners: dict[int, int] = {}
        for r, b in enumerate(batches):
            if b.weight is not None and b.weight.sum() == 0:
                continue  # a rank with no group this step
            for k in set(groups[b.index.numpy()].tolist()):
                assert owners.setdefault(k, r) == r  # a group lives on one rank
            seen.extend(b.index.tolist())
    assert sorted(seen) == list(range(len(groups)))
    ordered = sorted(i for lo in loaders for b in lo.ordered(7) for i in b.index.tolist())
    assert ordered == list(range(len(groups)))  # inference: each row on exactly one rank


# ----------------------------------------------------------------------------- metrics


def test_ndcg_and_recall_at_k_by_hand():
    # group 0: scores order rows 1, 0, 2 → labels 1, 0, 1 ; group 1: no positive, not counted
    y = np.array([0, 1, 1, 0, 0])
    score = np.array([0.5, 0.9, 0.1, 0.3, 0.2])
    group = np.array([0, 0, 0, 1, 1])
    ndcg, recall = ranking_at_k(y, score, group, k=2)
    assert ndcg == pytest.approx(1.0 / (1.0 + 1 / math.log2(3)))  # DCG = 1, IDCG = 1 + 1/log2 3
    assert recall == pytest.approx(0.5)  # 1 positive in the top 2, of min(2, 2)
    ndcg3, recall3 = ranking_at_k(y, score, group, k=3)
    assert ndcg3 == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3))) and recall3 == 1.0
    out = compute("binary", y.astype(float), score, group, ks=[2, 3])
    assert out["ndcg@2"] == ndcg and out["recall@3"] == 1.0
    assert "ndcg@10" not in compute("binary", y.astype(float), score, None)  # without a group: none


# ----------------------------------------------------------------------------- config and runs


def test_default_is_pointwise_on_the_plain_loader(tmp_path):
    cfg = config_from_dict(base_config(tmp_path))
    assert cfg.distillation.loss == "pointwise" and not ranking.wants_groups(cfg)
    from distill.run import make_loader
    from distill.data.dataset import load_splits
    loader = make_loader(cfg, load_splits(cfg))
    assert type(loader) is InMemoryLoader and ranking.term_of(cfg, loader) is None  # the old code path
    cfg.distillation.loss = "listwise"
    assert isinstance(make_loader(cfg, load_splits(cfg)), GroupedLoader)


@pytest.mark.parametrize("edit, says", [
    ({"task": {"type": "binary", "label": "click"}}, "distillation.loss: 'listwise' orders rows within groups; set task.group"),
    ({"data": {"streaming": True}}, "data.streaming cannot keep them"),
    ({"distillation": {"loss_weights": {"pointwise": 1.0}}}, "loss_weights must include distillation.loss ('listwise')"),
])
def test_bad_ranking_config_is_one_line(tmp_path, edit, says):
    raw = base_config(tmp_path, distillation={"mode": "sync", "weight": 0.5, "loss": "listwise"})
    for k, v in edit.items():
        raw[k] = v if k == "task" else {**raw[k], **v}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2, r.output
    assert says in r.output and "Traceback" not in r.output


def test_listwise_run_through_the_cli_logs_its_term_and_reports_ndcg(tmp_path):
    raw = base_config(tmp_path, distillation={"mode": "async", "weight": 0.5, "loss": "pairwise",
                                              "loss_weights": {"pairwise": 1.0, "pointwise": 0.5}, "max_pairs": 200},
                      task={"ranking_k": [5]})
    raw["train"]["epochs"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "--no-report"])
    assert r.exit_code == 0, r.output
    run = Path(raw["output"])
    m = json.loads((run / "metrics.json").read_text())
    assert {"ndcg@5", "recall@5", "gauc"} <= set(m["student"]["test"]) and "ndcg@10" not in m["student"]["test"]
    steps = [json.loads(line) for p in run.rglob("*.jsonl") for line in p.read_text().splitlines() if '"L_pairwise"' in line]
    assert steps and all({"L_pairwise", "L_pointwise"} <= set(s) for s in steps)


def test_listwise_under_torchrun_steps_like_one_process(tmp_path):
    """Two processes with a within-group loss: groups are sharded whole, every rank steps as often
    as one process does (no rank waits in a collective for a batch it never draws)."""
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from distill.demo import DEMO_CONFIG, make_log
    for name, n, seed in (("train", 3000, 1), ("valid", 1000, 2), ("test", 1000, 3)):
        pq.write_table(make_log(n, seed, n_users=300, n_items=150), tmp_path / f"{name}.parquet")
    raw = yaml.safe_load(DEMO_CONFIG.replace("{data}", str(tmp_path)))
    raw["teacher"].update(hidden=[16], dropout=0.0)
    raw["student"]["hidden"] = [16]
    raw["distillation"]["loss"] = "listwise"
    raw["train"].update(epochs=1, batch_size=256, baseline=False, threads=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    one = tmp_path / "one"
    r = runner.invoke(app, ["train", str(path), "--output", str(one), "-q", "--no-report"])
    assert r.exit_code == 0, r.output
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "distill", "train", str(path), "-q", "--no-report", "--output", str(tmp_path / "two")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    count = lambda d: len((d / "steps.jsonl").read_text().splitlines())  # noqa: E731
    assert count(tmp_path / "two") == count(one) > 0
    assert "ndcg@10" in json.loads((tmp_path / "two" / "metrics.json").read_text())["student"]["test"]


def test_grouped_loader_cuts_heavy_groups_into_chunks():
    groups = [0] * 50 + [1] * 3 + [2] * 9
    loader = GroupedLoader(encoded(groups), batch_size=12, seed=0, max_group_rows=4)
    assert sorted(loader.sizes.tolist()) == [1, 2, 3] + [4] * 14  # 50 = 12·4 + 2, 3, 9 = 2·4 + 1
    seen = sorted(i for b in loader.epoch(0) for i in b.index.tolist())
    assert seen == list(range(len(groups))) and all(len(b) <= 12 for b in loader.epoch(1))
    whole = GroupedLoader(encoded(groups), batch_size=12, seed=0)
    assert max(len(b) for b in whole.epoch(0)) == 50  # without it, the heavy group is one batch


# ----------------------------------------------------------------------------- distillation.group


def _whole(loader, column: np.ndarray) -> bool:
    """True when every batch of epoch 0 holds every row of each `column` value it touches."""
    for b in loader.epoch(0):
        g = column[b.index.numpy()]
        if any((column == k).sum() != (g == k).sum() for k in set(g.tolist())):
            return False
    return True


def test_distillation_group_groups_the_batches_and_the_term_by_its_column(tmp_path):
    import pyarrow.parquet as pq
    from distill.data.dataset import load_splits
    from distill.run import make_loader
    raw = base_config(tmp_path, distillation={"mode": "async", "weight": 0.5, "loss": "listwise"},
                      train={"batch_size": 64})
    table = pq.read_table(raw["data"]["train"])
    user, item = (np.unique(table[c].to_numpy(), return_inverse=True)[1] for c in ("user", "item"))
    by_user = config_from_dict(raw)
    raw["distillation"]["group"] = "item"
    by_item = config_from_dict(raw)
    loaders = {}
    for name, cfg in (("user", by_user), ("item", by_item)):
        splits = load_splits(cfg)
        loaders[name] = make_loader(cfg, splits)
        assert splits.train.group is not None  # GAUC still groups by task.group (user) either way
    assert _whole(loaders["user"], user) and not _whole(loaders["user"], item)  # default: task.group
    assert _whole(loaders["item"], item) and not _whole(loaders["item"], user)
    terms = {n: ranking.term_of(c, loaders[n]) for n, c in (("user", by_user), ("item", by_item))}
    assert len(set(terms["item"].groups.tolist())) == len(set(item.tolist())) != len(set(terms["user"].groups.tolist()))
    b = next(iter(loaders["item"].epoch(0)))
    s, t = torch.randn(len(b)), torch.randn(len(b))
    assert not torch.isclose(terms["item"](s, t, b)["L_d"], terms["user"](s, t, b)["L_d"])  # another grouping, another loss


def test_distillation_group_through_the_cli_and_its_bad_column_is_one_line(tmp_path):
    raw = base_config(tmp_path, distillation={"mode": "async", "weight": 0.5, "loss": "pairwise", "group": "item"})
    raw["train"].update(epochs=1, baseline=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "--no-report", "-q"])
    assert r.exit_code == 0, r.output
    assert "gauc" in json.loads((Path(raw["output"]) / "metrics.json").read_text())["student"]["test"]
    raw["distillation"]["group"] = "request"
    raw["output"] = str(tmp_path / "other")
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "--no-report", "-q"])
    assert r.exit_code == 2 and "distillation.group: no column 'request'" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_distillation_group_without_a_within_group_loss_is_a_warning_and_stands_in_for_task_group(tmp_path):
    raw = base_config(tmp_path, distillation={"mode": "async", "weight": 0.5, "group": "item"})
    assert ranking.check(config_from_dict(raw)) == ["distillation.group is ignored: distillation.loss 'pointwise' uses no groups"]
    raw["distillation"]["loss"] = "listwise"
    raw["task"].pop("group")
    assert ranking.check(config_from_dict(raw)) == []  # no task.group: distillation.group is enough


# ----------------------------------------------------------------------------- in-batch groups


def test_in_batch_groups_of_one_two_and_three_rows_with_ties_by_hand():
    """An ordinary batch: users with 1, 2 and 3 rows in it (and a teacher tie); only the users with
    two rows or more count, and the term is the hand average over their pairs / lists."""
    s = torch.tensor([0.4, 1.0, -0.5, 0.2, 0.7, -1.2, 0.3])
    t = torch.tensor([2.0, 0.5, 0.5, -1.0, 1.0, 3.0, 0.0])
    g = torch.tensor([9, 4, 4, 1, 1, 7, 1])  # user 9: one row, 4: two (teacher tie), 1: three, 7: one
    pairs = [(1, 2), (3, 4), (3, 6), (4, 6)]
    hand = np.mean([bce(sig((t[i] - t[j]).item()), sig((s[i] - s[j]).item())) for i, j in pairs])
    assert pairwise_distill_loss(s, t, g).item() == pytest.approx(hand, rel=1e-6)
    assert pairs[0] == (1, 2) and t[1] == t[2]  # the tie's target is 1/2: bce(0.5, σ(s1 − s2)) is in the mean

    def ce(rows):
        pt = np.exp(t[rows].numpy()); pt /= pt.sum()
        ls = s[rows].numpy() - np.log(np.exp(s[rows].numpy()).sum())
        return -(pt * ls).sum()

    assert listwise_distill_loss(s, t, g).item() == pytest.approx((ce([1, 2]) + ce([3, 4, 6])) / 2, rel=1e-6)
    mixed = mixed_distill_loss(s, t, "binary", g, {"pointwise": 1.0, "listwise": 0.5})
    assert mixed["L_d"].item() == pytest.approx(distill_loss(s, t, "binary").item() + 0.5 * mixed["L_listwise"].item(), rel=1e-6)
    lone = torch.tensor([0, 1, 2, 3, 4, 5, 6])  # every user alone in the batch: nothing within groups
    for loss in (pairwise_distill_loss, listwise_distill_loss):
        out = loss(s.clone().requires_grad_(), t, lone)
        assert out.item() == 0.0
        out.backward()  # still a graph


def _in_batch_cfg(tmp_path, **distillation):
    raw = base_config(tmp_path, distillation={"mode": "sync", "weight": 0.5, "loss": "listwise",
                                              "loss_weights": {"pointwise": 1.0, "listwise": 0.5},
                                              "group_batches": "in_batch", **distillation},
                      train={"batch_size": 64})
    return raw, config_from_dict(raw)


def test_in_batch_uses_the_pointwise_loaders_batches_and_their_groups(tmp_path):
    from distill.data.dataset import load_splits
    from distill.run import make_loader
    raw, cfg = _in_batch_cfg(tmp_path)
    pointwise = config_from_dict({**raw, "distillation": {"mode": "sync", "weight": 0.5}})
    loader, plain = make_loader(cfg, load_splits(cfg)), make_loader(pointwise, load_splits(pointwise))
    assert type(loader) is InMemoryLoader and type(plain) is InMemoryLoader
    for epoch in (0, 1):  # the same rows in the same order, batch by batch
        ours, theirs = list(loader.epoch(epoch)), list(plain.epoch(epoch))
        assert len(ours) == len(theirs) and all(torch.equal(a.index, b.index) for a, b in zip(ours, theirs))
    term = ranking.term_of(cfg, loader)
    b = next(iter(loader.epoch(0)))
    users = term.groups[b.index]
    assert len(set(users.tolist())) < len(b)  # some users share the batch: the term has lists to order
    s, t = torch.randn(len(b)), torch.randn(len(b))
    assert term(s, t, b)["L_listwise"].item() == pytest.approx(listwise_distill_loss(s, t, users).item(), rel=1e-6)
    cfg.distillation.group_batches = "whole"
    assert isinstance(make_loader(cfg, load_splits(cfg)), GroupedLoader)  # the default keeps whole groups
    assert config_from_dict(base_config(tmp_path)).distillation.group_batches == "whole"


def test_in_batch_through_the_cli_and_its_refusals(tmp_path):
    raw, _ = _in_batch_cfg(tmp_path, loss="pairwise", loss_weights={"pointwise": 1.0, "pairwise": 0.5})
    raw["train"].update(epochs=1, baseline=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "--no-report", "-q"])
    assert r.exit_code == 0, r.output
    run = Path(raw["output"])
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines() if '"L_pairwise"' in line]
    assert steps and any(s["L_pairwise"] > 0 for s in steps)
    pointwise = {**raw, "distillation": {"mode": "sync", "weight": 0.5, "group_batches": "in_batch"}}
    assert ranking.check(config_from_dict(pointwise)) == [
        "distillation.group_batches is ignored: distillation.loss 'pointwise' uses no groups"]
    raw["distillation"]["max_group_rows"] = 8
    assert ranking.check(config_from_dict(raw)) == [
        "distillation.max_group_rows is ignored: distillation.group_batches 'in_batch' uses the ordinary batches"]
    raw["data"]["streaming"] = True
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and "data.streaming does not keep the split there" in r.output and "Traceback" not in r.output
    raw["data"]["streaming"], raw["distillation"]["group_batches"] = False, "some"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and "group_batches" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("loss, extra", [("listwise", {}), ("pairwise", {"max_pairs": 5})])
def test_a_within_group_term_reads_nothing_back_per_step(tmp_path, monkeypatch, loss, extra):
    from distill.data.dataset import load_splits
    from distill.run import make_loader
    _, cfg = _in_batch_cfg(tmp_path, loss=loss, loss_weights={"pointwise": 1.0, loss: 0.5}, **extra)
    loader = make_loader(cfg, load_splits(cfg))
    term = ranking.term_of(cfg, loader)
    batches = list(loader.epoch(0))
    with HostReads() as reads:
        for b in batches:
            s = torch.randn(len(b), requires_grad=True)
            out = term(s, torch.randn(len(b)), b)
            out["L_d"].backward()
    assert len(batches) > 3 and reads.count == 0, reads.count
    assert out[f"L_{loss}"].item() > 0


def test_sampled_pairs_depend_on_the_rows_and_seed_only():
    s, t = torch.randn(12), torch.randn(12)
    g, rows = torch.zeros(12, dtype=torch.int64), torch.arange(100, 112)
    a = pairwise_distill_loss(s, t, g, max_pairs=10, row_ids=rows, seed=3)
    assert a.item() == pairwise_distill_loss(s, t, g, max_pairs=10, row_ids=rows, seed=3).item()  # a resumed step
    assert a.item() != pairwise_distill_loss(s, t, g, max_pairs=10, row_ids=rows, seed=4).item()
    assert a.item() != pytest.approx(pairwise_distill_loss(s, t, g).item(), rel=1e-6)  # 10 of the 66 pairs


@pytest.mark.parametrize("batches", ["in_batch", "whole"])
def test_a_sync_step_with_a_within_group_term_reads_the_device_once_per_logging_interval(tmp_path, monkeypatch, batches):
    """The whole sync step loop (teacher, student, listwise + pointwise L_d, optimizer) as in
    tests/test_gpu.py: only the logged steps read their losses back."""
    from distill import phases
    from distill.data.dataset import load_splits
    from distill.run import build_member, make_loader
    from distill.training.loop import Plan
    raw, cfg = _in_batch_cfg(tmp_path, group_batches=batches)
    cfg.train.batch_size = 32
    splits = load_splits(cfg)
    loader = make_loader(cfg, splits)
    term = ranking.term_of(cfg, loader)
    members = [build_member(cfg, splits.encoders, n) for n in ("teacher", "student")]
    # the batches made beforehand: the grouped loader packs its groups with CPU-side .tolist() calls
    # (row numbers on the host, no device involved), which are not what this counts
    made = list(loader.epoch(0))
    loader.epoch = lambda epoch, start=0: iter(made[start:])
    with HostReads() as reads:
        summary = phases.fit_together(*members, loader, None, splits.encoders.label, Plan(epochs=1, metric="auc", log_every=5),
                                      lam=0.5, term=term)
    steps = summary["steps"]
    assert steps >= 10 and reads.count <= math.ceil(steps / 5) + 1, (steps, reads.count)
