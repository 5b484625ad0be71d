"""Behaviour sequences (issue 17): the `sequence` kind, its encoders against hand computations
(padding changes nothing, an empty history gives zeros), the din model, sharing the encoder in
sync mode, and the user's path: init, validate, train, export (leak-checked), predict, serve."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.config import FeatureConfig, config_from_dict
from distill.data.kinds import fit_feature
from distill.models.sequence import MeanPool, SelfAttention, TargetAttention, masked_mean

runner = CliRunner()


def seq_table(n: int, seed: int) -> pa.Table:
    """A click log where the label follows the history: a click is likelier when the candidate is
    among the user's previous items (half the rows); `intent` is privileged."""
    r = np.random.default_rng(seed)
    item = r.integers(0, 30, n)
    lengths = r.integers(0, 9, n)
    hist = [[int(v) for v in r.integers(0, 30, k)] for k in lengths]
    for i in np.flatnonzero((r.random(n) < 0.5) & (lengths > 0)):
        hist[i][r.integers(lengths[i])] = int(item[i])
    seen = np.array([it in hs for hs, it in zip(hist, item)])
    intent = r.normal(0, 1, n)
    z = 2.5 * seen - 1.2 + intent
    y = (r.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return pa.table({"user": r.integers(0, 40, n), "item_id": pa.array(item), "hist": pa.array(hist, pa.list_(pa.int64())),
                     "intent": intent + r.normal(0, 0.3, n), "click": y,
                     # a side channel: each item's category, for the candidate and along its history
                     "item_cat": pa.array([f"c{v % 4}" for v in item]),
                     "hist_cat": pa.array([[f"c{h % 4}" for h in hs] for hs in hist], pa.list_(pa.string()))})


def seq_config(tmp: Path, student: str = "din", encoder: str | None = None, side: bool = False, **distillation) -> dict:
    for name, n, seed in (("train", 1200, 1), ("valid", 300, 2), ("test", 300, 3)):
        if not (tmp / f"{name}.parquet").exists():
            pq.write_table(seq_table(n, seed), tmp / f"{name}.parquet")
    hist = {"name": "hist", "type": "sequence", "shares": "item_id", "max_len": 5}
    if encoder:
        hist["encoder"] = encoder
    return {
        "data": {"train": str(tmp / "train.parquet"), "valid": str(tmp / "valid.parquet"), "test": str(tmp / "test.parquet")},
        "task": {"type": "binary", "label": "click"},
        "features": [{"name": "user", "type": "categorical"}, {"name": "item_id", "type": "categorical"}, hist,
                     {"name": "intent", "type": "numeric", "privileged": True}]
        + ([{"name": "item_cat", "type": "categorical"},
            {"name": "hist_cat", "type": "sequence", "shares": "item_cat", "side_of": "hist", "max_len": 5}] if side else []),
        "teacher": {"model": "din", "hidden": [16], "embedding_dim": 4},
        "student": {"model": student, "hidden": [8], "embedding_dim": 4, "tower_dim": 4,
                    "user_features": ["user", "hist"] if student == "two_tower" else None},
        "distillation": {"mode": "sync", **distillation},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.01, "threads": 1, "baseline": False, "early_stopping": None},
        "output": str(tmp / "run"),
    }


# ----------------------------------------------------------------------------- encoders as functions


KEYS = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]],
                     [[3.0, 1.0], [7.0, 7.0], [7.0, 7.0]],
                     [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]])  # (B=3, L=3, D=2)
MASK = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])  # lengths 2, 1, 0


def with_other_padding(keys: torch.Tensor) -> torch.Tensor:
    return torch.where(MASK.unsqueeze(-1), keys, torch.full_like(keys, -123.0))


def test_masked_mean_by_hand_ignores_padding_and_gives_zeros_for_an_empty_history():
    expected = torch.tensor([[0.5, 1.0], [3.0, 1.0], [0.0, 0.0]])
    assert torch.equal(masked_mean(KEYS, MASK), expected)
    assert torch.equal(MeanPool(2)(with_other_padding(KEYS), MASK), expected)


def test_din_weights_are_the_unit_mlp_by_hand_masked_and_not_normalised():
    torch.manual_seed(0)
    din = TargetAttention(2, hidden=3)
    q = torch.tensor([[1.0, 1.0], [0.0, -1.0], [2.0, 0.0]])
    w = din.weights(KEYS, MASK, q)
    lin1, prelu, lin2 = din.unit
    for b in range(3):
        for i in range(3):
            k = KEYS[b, i]
            x = torch.cat([q[b], k, q[b] - k, q[b] * k])
            h = lin1.weight @ x + lin1.bias
            h = torch.where(h > 0, h, prelu.weight * h)
            want = (lin2.weight @ h + lin2.bias).item() if MASK[b, i] else 0.0
            assert w[b, i].item() == pytest.approx(want, abs=1e-6)
    out = din(KEYS, MASK, q)
    torch.testing.assert_close(out, (w.unsqueeze(-1) * KEYS).sum(1))
    assert not torch.allclose(w[0].sum(), torch.tensor(1.0))  # no softmax: the weights do not sum to 1
    assert torch.equal(out[2], torch.zeros(2))  # an empty history
    assert torch.equal(din(with_other_padding(KEYS), MASK, q), out)
    with pytest.raises(ValueError, match="candidate"):
        din(KEYS, MASK)


def test_self_attention_attends_over_real_items_only():
    torch.manual_seed(0)
    enc = SelfAttention(2, max_len=3).eval()
    att = enc.weights(KEYS, MASK)  # (B, L, L)
    assert torch.all(att[0, :, 2] == 0) and torch.all(att[1, :, 1:] == 0)
    torch.testing.assert_close(att[:2].sum(-1), torch.ones(2, 3))
    # row 0 by hand: softmax over the two real keys of (q·k)/√D, positions added
    x = KEYS[0] + enc.position.weight
    q, k, _ = enc.qkv(x).chunk(3, dim=-1)
    s = (q[0] @ k[:2].T) / math.sqrt(2)
    torch.testing.assert_close(att[0, 0, :2], torch.softmax(s, -1))
    out = enc(KEYS, MASK)
    assert torch.isfinite(out).all() and torch.equal(out[2], torch.zeros(2))
    torch.testing.assert_close(enc(with_other_padding(KEYS), MASK), out, rtol=0, atol=1e-6)
    # longer than max_len: the last position embedding repeats rather than failing
    assert enc(torch.randn(2, 5, 2), torch.ones(2, 5, dtype=torch.bool)).shape == (2, 2)


# ----------------------------------------------------------------------------- the kind


def test_sequence_keeps_the_most_recent_ids_maps_unknown_to_oov_and_shares_the_candidates_ids():
    from distill.data.encoders import fit_encoders
    from distill.config import TaskConfig
    t = pa.table({"item_id": ["a", "b", "c", "a"],
                  "hist": pa.array([["b", "a", "c", "a"], [], None, ["zzz", "a"]], pa.list_(pa.string())),
                  "y": [0, 1, 0, 1]})
    specs = [FeatureConfig(name="item_id", type="categorical"),
             FeatureConfig(name="hist", type="sequence", shares="item_id", max_len=3)]
    enc, filled = fit_encoders(specs, TaskConfig(label="y"), [(t, "t")], "t")
    ids, nulls = enc.features["hist"].encode(t.column("hist"), "t")
    a, b, c = (enc.features["item_id"].encode(pa.chunked_array([[v]]), "t")[0][0] for v in "abc")
    assert ids.tolist() == [[b, a, c], [0, 0, 0], [0, 0, 0], [1, a, 0]]  # first max_len kept, 0 pads, zzz → OOV 1
    assert nulls == 1 and filled == {"hist": 1}  # only the null is missing; an empty history is not
    # a separated string means the same list
    strings = enc.features["hist"].encode(pa.chunked_array([["b a c a", "", None, "zzz a"]]), "t")[0]
    assert np.array_equal(strings, ids)
    own = fit_feature(FeatureConfig(name="hist", type="sequence"), t.column("hist"), "t")
    assert own.index.vocab == ["a", "b", "c", "zzz"]  # without shares: a vocabulary of its own


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["features"][2].update(shares="price"), "feature 'hist': shares 'price', which is not a categorical feature"),
    (lambda r: r["features"][1].update(encoder="din"), "feature 'item_id': 'encoder' applies to type 'sequence' only"),
    (lambda r: (r["features"][2].pop("shares"), r["features"][2].update(encoder="din")), "encoder 'din' attends with the candidate"),
    (lambda r: r["features"][2].update(encoder="lstm"), "features[2] ('hist').encoder"),
    (lambda r: r["distillation"].update(share_sequence_encoder=True), "share_sequence_encoder: needs distillation.share_embeddings"),
    (lambda r: r["features"][1].update(privileged=True), "student.model 'din': din attends over a behaviour sequence"),
    (lambda r: r["student"].update(model="two_tower", user_features=["user", "hist"]), "in the other tower"),
])
def test_bad_sequence_config_is_one_line(tmp_path, edit, needle):
    raw = seq_config(tmp_path)
    raw["student"]["model"] = "dnn" if "din'" not in needle else "din"
    raw["features"][2]["encoder"] = "din" if "other tower" in needle else raw["features"][2].get("encoder")
    edit(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output


# ----------------------------------------------------------------------------- sharing in sync mode


def test_shared_sequence_encoder_is_one_module_and_which_losses_reach_it():
    from distill.data.batch import Batch
    from distill.losses import distill_loss, hard_loss
    from distill.models import MODELS
    from distill.models.parts import FeatureInfo, ModelSpec, share_sequence_encoders, share_tables
    feats = (FeatureInfo("item", "categorical", 9), FeatureInfo("hist", "sequence", 9, shares="item", encoder="din", max_len=4),
             FeatureInfo("intent", "numeric"))
    spec = lambda fs: ModelSpec(features=fs, out_dim=1, hidden=(8,), embedding_dim=4)  # noqa: E731
    torch.manual_seed(0)
    teacher, student = MODELS["din"](spec(feats)), MODELS["dnn"](spec(feats[:2]))
    assert share_tables(teacher, student, ["item", "hist"]) == ["item"]  # hist reads item's table: it has none
    assert share_sequence_encoders(teacher, student, ["item", "hist"]) == ["hist"]
    assert student.embedding.sequences["hist"] is teacher.embedding.sequences["hist"]
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        {"item": torch.randint(1, 9, (6,), generator=g), "hist": torch.randint(0, 9, (6, 4), generator=g),
         "intent": torch.randn(6, 2, generator=g)})
    enc = teacher.embedding.sequences["hist"]
    t_logits, s_logits = teacher(batch), student(batch.select(["item", "hist"]))
    # L_d alone (teacher logits detached, as the sync loop does): the shared encoder moves, the teacher's MLP does not
    distill_loss(s_logits, t_logits.detach(), "binary").backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert all(p.grad is None for p in teacher.over.parameters())
    # L_t reaches the shared encoder through the teacher
    for m in (teacher, student):
        m.zero_grad(set_to_none=True)
    hard_loss(t_logits, torch.ones(6), "binary").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert all(p.grad is None for p in student.over.parameters())


def test_sync_run_shares_the_encoder_and_saves_it_in_both_models(tmp_path):
    from distill.run import train
    raw = seq_config(tmp_path, student="dnn", encoder="self_attention", share_embeddings=True, share_sequence_encoder=True)
    raw["teacher"]["model"] = "dnn"
    run = train(config_from_dict(raw), quiet=True)
    info = json.loads((run.path / "run.json").read_text())
    assert info["shared_tables"] == ["user", "item_id"] and info["shared_sequence_encoders"] == ["hist"]
    t, s = run.models["teacher"].embedding.sequences["hist"], run.models["student"].embedding.sequences["hist"]
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), s.state_dict().values()))
    from distill.report import write_report
    write_report(run.path, tmp_path / "report")  # the report says it too
    assert "Shared sequence encoders: hist." in (tmp_path / "report" / "report.md").read_text()


# ----------------------------------------------------------------------------- where the user meets it


@pytest.fixture(scope="module")
def din_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("din")
    raw = seq_config(tmp)
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "-q"])
    assert r.exit_code == 0, r.output
    from distill.run import load_run
    return tmp, load_run(raw["output"])


def test_init_guesses_a_history_column_and_validate_lists_it(tmp_path):
    pq.write_table(seq_table(300, 1), tmp_path / "train.parquet")
    out = tmp_path / "config.yaml"
    r = runner.invoke(app, ["init", str(tmp_path / "train.parquet"), "-o", str(out), "--label", "click"])
    assert r.exit_code == 0, r.output
    hist = next(f for f in yaml.safe_load(out.read_text())["features"] if f["name"] == "hist")
    assert hist["type"] == "sequence" and hist["shares"] == "item_id"
    r = runner.invoke(app, ["validate", str(out)])
    assert r.exit_code == 0, r.output
    assert "sequence, mean, ids of item_id" in r.output


def test_din_round_trip_train_export_predict_serve(din_run, tmp_path):
    from fastapi.testclient import TestClient

    from distill.serving import ExportedModel
    from distill.serving.service import create_app
    tmp, run = din_run
    assert run.metrics["student"]["test"]["auc"] > 0.55  # the history carries the signal (0.51 when mean-pooled)
    r = runner.invoke(app, ["export", str(run.path), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    hist = next(f for f in manifest["serving"] if f["name"] == "hist")
    assert hist["type"] == "sequence" and hist["input"] == {"dtype": "int64", "shape": ["batch", "seq"]}
    assert manifest["leak_check"]["passed"]
    model = ExportedModel(tmp_path / "exp")
    test = pq.read_table(tmp / "test.parquet")
    np.testing.assert_allclose(model.predict(test), run.predict(test), atol=1e-5, rtol=0)
    # batch scoring through the CLI gives the same numbers
    r = runner.invoke(app, ["predict", str(tmp_path / "exp"), str(tmp / "test.parquet"), "-o", str(tmp_path / "p.parquet")])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(pq.read_table(tmp_path / "p.parquet").column(0).to_numpy(), run.predict(test), atol=1e-5)

    client = TestClient(create_app(model))
    row = {"user": 3, "item_id": 4, "hist": [4, 7, 1, 10, 13]}
    one = client.post("/predict", json=row)
    assert one.status_code == 200, one.text
    assert one.json()["predictions"][0] == pytest.approx(float(run.predict([row])[0]), abs=1e-5)
    longer = client.post("/predict", json={**row, "hist": row["hist"] + [2, 5, 8]}).json()  # cut at max_len 5
    assert longer == one.json()
    assert client.post("/predict", json={**row, "hist": "4 7 1 10 13"}).json() == one.json()
    assert client.post("/predict", json={**row, "hist": []}).status_code == 200
    bad = client.post("/predict", json={**row, "hist": {"a": 1}})
    assert bad.status_code == 422 and "field 'hist'" in bad.json()["error"]


def test_streaming_trains_on_a_sequence_as_in_memory_does(din_run, tmp_path):
    from distill.run import train
    tmp, run = din_run
    raw = seq_config(tmp)
    raw["data"]["streaming"] = True
    raw["output"] = str(tmp_path / "streamed")
    pq.write_table(pq.read_table(tmp / "train.parquet"), tmp_path / "train.parquet", row_group_size=200)
    raw["data"]["train"] = str(tmp_path / "train.parquet")
    streamed = train(config_from_dict(raw), quiet=True)
    assert streamed.encoders.features["hist"].to_dict() == run.encoders.features["hist"].to_dict()
    assert streamed.metrics["student"]["test"]["auc"] > 0.55


@pytest.mark.parametrize("student", ["dnn", "two_tower"])
def test_self_attention_exports_and_a_two_tower_user_tower_carries_the_sequence(tmp_path, student):
    from distill.run import train
    from distill.serving import ExportedModel
    from distill.serving.export import export
    raw = seq_config(tmp_path, student=student, encoder="self_attention")
    raw["teacher"]["model"] = "dnn"
    raw["train"]["epochs"] = 1
    run = train(config_from_dict(raw), quiet=True)
    model = ExportedModel(export(run, "onnx", tmp_path / "exp", towers=student == "two_tower"))
    assert model.manifest["leak_check"]["passed"]
    test = pq.read_table(tmp_path / "test.parquet")
    np.testing.assert_allclose(model.predict(test), run.predict(test), atol=1e-5, rtol=0)
    if student == "two_tower":
        spec = model.manifest["towers"]["user"]
        assert spec["inputs"] == ["user", "hist"] and spec["leak_check"]["passed"]
        logit = (model.vectors("user", test) * model.vectors("item", test)).sum(1)
        np.testing.assert_allclose(1 / (1 + np.exp(-logit)), run.predict(test), atol=1e-5)


def test_din_learns_a_history_signal_that_mean_pooling_misses(din_run, tmp_path):
    """The synthetic click follows 'the candidate is among the previous items': attention with the
    candidate as the query finds it; the mean of the history does not (one seed, measured 0.58 vs 0.51)."""
    from distill.run import train
    tmp, run = din_run
    raw = seq_config(tmp, student="dnn", encoder="mean")
    raw["output"] = str(tmp_path / "mean")
    mean = train(config_from_dict(raw), quiet=True)
    assert run.metrics["student"]["test"]["auc"] > mean.metrics["student"]["test"]["auc"] + 0.03


def test_din_exposes_its_last_hidden_layer_for_hints_and_needs_a_candidate():
    from distill.config import ModelConfig
    from distill.data.batch import Batch
    from distill.hints import Capture
    from distill.models import build_model
    from distill.models.parts import FeatureInfo
    feats = (FeatureInfo("i", "categorical", 5), FeatureInfo("h", "sequence", 5, shares="i", max_len=3), FeatureInfo("x", "numeric"))
    net = build_model(ModelConfig(model="din", hidden=[8, 6], embedding_dim=4), feats, 1)
    cap = Capture(net, None, "distillation.hint.layer")
    batch = Batch({"i": torch.tensor([1, 2, 3]), "h": torch.tensor([[2, 1, 0], [0, 0, 0], [4, 4, 4]]), "x": torch.randn(3, 2)})
    assert net(batch).shape == (3,) and cap.value.shape == (3, 6)
    with pytest.raises(ValueError, match="din attends over a behaviour sequence"):
        build_model(ModelConfig(model="din"), feats[:1] + feats[2:], 1)


def test_a_sequence_column_of_the_wrong_type_is_one_line_naming_it(tmp_path):
    raw = seq_config(tmp_path)
    t = pq.read_table(raw["data"]["train"])
    pq.write_table(t.set_column(t.column_names.index("hist"), "hist", pa.array(np.arange(t.num_rows, dtype=float))),
                   raw["data"]["train"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "-q"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "column 'hist' is double; a sequence feature is a list column" in r.output, r.output
    assert not Path(raw["output"]).exists()


def test_two_processes_train_a_shared_din_like_one(tmp_path):
    """torchrun with 2 processes: the sequence tensors travel in the batch like any feature, and the
    shared table and encoder are reduced once (the same updates as one process)."""
    import os
    import subprocess
    import sys
    from safetensors.torch import load_file

    from distill.run import train
    raw = seq_config(tmp_path, share_embeddings=True, share_sequence_encoder=True)
    raw["train"]["epochs"] = 1
    single = train(config_from_dict(raw), output=tmp_path / "single", quiet=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "distill", "train", str(path), "-q", "--output", str(tmp_path / "two")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2 and info["shared_sequence_encoders"] == ["hist"]
    for role in ("teacher", "student"):
        ours, theirs = load_file(tmp_path / "two" / f"{role}.safetensors"), load_file(single.path / f"{role}.safetensors")
        assert any("sequences.hist" in k for k in theirs)
        assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < 1e-3



# ----------------------------------------------------------------------------- side channels


def test_a_side_channel_is_added_to_its_items_and_to_dins_query_by_hand():
    from distill.data.batch import Batch
    from distill.models.parts import FeatureEmbedding, FeatureInfo
    feats = (FeatureInfo("item", "categorical", 6), FeatureInfo("cat", "categorical", 4),
             FeatureInfo("hist", "sequence", 6, shares="item", encoder="din", max_len=3),
             FeatureInfo("hist_cat", "sequence", 4, shares="cat", max_len=3, side_of="hist"))
    torch.manual_seed(0)
    emb = FeatureEmbedding(feats, 2)
    assert emb.sparse_names == ["item", "cat", "hist"] and emb.sides == {"hist": ["hist_cat"]}
    assert set(emb.tables) == {"item", "cat"}  # both sequences read their candidates' tables
    b = Batch({"item": torch.tensor([2, 3]), "cat": torch.tensor([1, 2]),
               "hist": torch.tensor([[3, 4, 0], [0, 0, 0]]), "hist_cat": torch.tensor([[2, 3, 0], [0, 0, 0]])})
    E, C = emb.tables["item"].weight, emb.tables["cat"].weight
    keys = E[b["hist"]] + C[b["hist_cat"]]
    query = E[b["item"]] + C[b["cat"]]
    want = emb.sequences["hist"](keys, b["hist"] != 0, query)
    torch.testing.assert_close(emb.fields(b)[:, 2], want)
    assert torch.equal(want[1], torch.zeros(2))


@pytest.mark.parametrize("edit, needle", [
    (lambda f: f.update(side_of="item_id"), "side_of 'item_id', which is not a sequence feature"),
    (lambda f: f.update(max_len=7), "a side channel needs the max_len and privileged of 'hist' (5, False), not (7, False)"),
    (lambda f: f.update(encoder="mean"), "a side channel has no encoder of its own"),
])
def test_bad_side_channel_config_is_one_line(tmp_path, edit, needle):
    raw = seq_config(tmp_path, side=True)
    edit(raw["features"][-1])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_side_channel_of_another_length_is_one_line_naming_its_row(tmp_path):
    raw = seq_config(tmp_path, side=True)
    t = pq.read_table(raw["data"]["train"])
    cats = t["hist_cat"].to_pylist()
    row = next(i for i, c in enumerate(cats) if len(c) > 1)
    cats[row] = cats[row][:-1]
    pq.write_table(t.set_column(t.column_names.index("hist_cat"), "hist_cat", pa.array(cats, pa.list_(pa.string()))),
                   raw["data"]["train"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path), "-q"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"column 'hist_cat' (a side channel of 'hist') has another length than 'hist' in row {row}" in r.output, r.output


@pytest.mark.parametrize("student", ["din", "two_tower"])
def test_a_side_channel_trains_exports_and_serves(tmp_path, student):
    from fastapi.testclient import TestClient

    from distill.run import train
    from distill.serving import ExportedModel
    from distill.serving.export import export
    from distill.serving.service import create_app
    raw = seq_config(tmp_path, student=student, encoder="mean" if student == "two_tower" else None, side=True)
    raw["train"]["epochs"] = 1
    if student == "two_tower":
        raw["student"]["user_features"] = ["user", "hist", "hist_cat"]
    run = train(config_from_dict(raw), quiet=True)
    model = ExportedModel(export(run, "onnx", tmp_path / "exp", towers=student == "two_tower"))
    assert "hist_cat" in model.graph_inputs and model.manifest["leak_check"]["passed"]
    test = pq.read_table(tmp_path / "test.parquet")
    np.testing.assert_allclose(model.predict(test), run.predict(test), atol=1e-5, rtol=0)
    if student == "two_tower":
        assert model.manifest["towers"]["user"]["inputs"] == ["user", "hist", "hist_cat"]
        return
    client = TestClient(create_app(model))
    row = {"user": 3, "item_id": 4, "item_cat": "c0", "hist": [4, 7], "hist_cat": ["c0", "c3"]}
    ok = client.post("/predict", json=row)
    assert ok.status_code == 200 and ok.json()["predictions"][0] == pytest.approx(float(run.predict([row])[0]), abs=1e-5)
    bad = client.post("/predict", json={**row, "hist_cat": ["c0"]})
    assert bad.status_code == 422 and "'hist_cat' (a side channel of 'hist')" in bad.json()["error"], bad.text


def test_validate_lists_a_side_channel(tmp_path):
    raw = seq_config(tmp_path, side=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 0, r.output
    assert "sequence, side of hist, ids of item_cat" in r.output and "sequence, mean, ids of item_id" in r.output


@pytest.mark.parametrize("encoder", ["mean", "din", "self_attention"])
def test_a_batch_padded_wider_gives_the_same_logits(encoder):
    """Streamed chunks and requests pad to their own longest history: the width must not matter."""
    from distill.data.batch import Batch
    from distill.models import MODELS
    from distill.models.parts import FeatureInfo, ModelSpec
    feats = (FeatureInfo("item", "categorical", 9), FeatureInfo("hist", "sequence", 9, shares="item", encoder=encoder, max_len=8))
    torch.manual_seed(0)
    model = MODELS["dnn"](ModelSpec(features=feats, out_dim=1, hidden=(8,), embedding_dim=4)).eval()
    hist = torch.tensor([[3, 4, 0], [5, 0, 0], [0, 0, 0], [2, 2, 7]])
    items = torch.tensor([3, 1, 2, 7])
    narrow = model(Batch({"item": items, "hist": hist}))
    wide = model(Batch({"item": items, "hist": torch.nn.functional.pad(hist, (0, 4))}))
    torch.testing.assert_close(wide, narrow, rtol=0, atol=1e-6)


def test_torchscript_export_of_din_matches_the_run(din_run, tmp_path):
    from distill.serving import ExportedModel
    from distill.serving.export import export
    tmp, run = din_run
    model = ExportedModel(export(run, "torchscript", tmp_path / "ts"), trust_torchscript=True)
    test = pq.read_table(tmp / "test.parquet")
    assert model.manifest["leak_check"]["passed"]
    np.testing.assert_allclose(model.predict(test), run.predict(test), atol=1e-5, rtol=0)


def test_benchmark_histories_hold_only_strictly_earlier_positives_and_a_leak_is_counted():
    """benchmarks.datasets.past_items (the MovieLens histories): most recent first, cut to max_len, rows of
    one second do not see each other, sampled negatives never enter; history_leaks finds a planted leak."""
    from benchmarks.datasets import history_leaks, past_items
    user = np.array([1, 1, 1, 1, 2, 1, 1])
    item = np.array([10, 11, 12, 99, 10, 13, 14])
    ts = np.array([1, 2, 3, 3, 3, 4, 5])
    click = np.array([1, 1, 1, 0, 1, 1, 1])  # item 99 is a sampled negative of user 1 at second 3
    hist = past_items(user, item, ts, max_len=2, counts=click.astype(bool))
    assert hist == [[], [10], [11, 10], [11, 10], [], [12, 11], [13, 12]]
    log = pa.table({"user_id": user, "item_id": item, "timestamp": ts, "click": click, "hist": pa.array(hist, pa.list_(pa.int64()))})
    assert history_leaks(log) == 0
    planted = [list(h) for h in hist]
    planted[1] = [12]  # row at second 2 "remembers" the movie rated at second 3
    planted[2] = [12, 11]  # a row seeing its own movie: rated at, not before, its time
    planted[6] = [99]  # a negative was never watched
    leaky = log.set_column(4, "hist", pa.array(planted, pa.list_(pa.int64())))
    assert history_leaks(leaky) == 3
    from benchmarks.datasets import negatives_rated_later
    assert negatives_rated_later(log) == 0.0  # the one negative, 99, user 1 never rates
    later = log.set_column(1, "item_id", pa.array([10, 11, 12, 99, 10, 13, 99]))  # ... and now rates at second 5
    assert negatives_rated_later(later) == 1.0


@pytest.mark.parametrize("share", [True, False])
def test_a_sync_tune_trial_shares_the_sequence_encoder_when_asked(tmp_path, monkeypatch, share):
    """distill tune's sync trials build their own teacher and student: with share_sequence_encoder they
    train one encoder module, as `distill train` does; without it, two."""
    pytest.importorskip("optuna")
    from distill import phases
    from distill.tune import tune
    seen = []
    real = phases.fit_together

    def spy(teacher, student, *a, **k):
        seen.append((teacher.module.embedding.sequences["hist"], student.module.embedding.sequences["hist"]))
        return real(teacher, student, *a, **k)
    monkeypatch.setattr(phases, "fit_together", spy)
    raw = seq_config(tmp_path, student="dnn", encoder="self_attention", share_embeddings=True, share_sequence_encoder=share)
    raw["teacher"]["model"] = "dnn"
    raw["tune"] = {"modes": ["sync"], "temperature": None, "schedules": ["constant"], "pruning": False}
    tune(config_from_dict(raw), trials=2, seeds=0, output=tmp_path / "tune", quiet=True)
    assert len(seen) == 1  # trial 0 is the baseline; trial 1 a sync pair
    t_enc, s_enc = seen[0]
    assert (t_enc is s_enc) == share


def test_init_guesses_a_sequence_from_a_delimited_string_column(tmp_path):
    """A history written as one string ("12 7 33", "12|7|33") whose tokens are the values of item_id is
    guessed a sequence sharing item_id, with the separator found; a string bag whose tokens match no
    column stays a bag."""
    import pyarrow.compute as pc
    t = seq_table(300, 1)
    hist = t.column("hist").to_pylist()
    r = np.random.default_rng(0)
    t = (t.drop_columns(["hist", "hist_cat"])
         .append_column("hist_space", pa.array([" ".join(map(str, h)) for h in hist]))
         .append_column("hist_pipe", pa.array(["|".join(map(str, h)) for h in hist]))
         .append_column("tags", pa.array([" ".join(r.choice(["red", "blue", "big", "new"], 2)) for _ in hist])))
    assert pc.count(pc.match_substring(t.column("hist_pipe"), "|")).as_py() > 200  # mostly lists of several ids
    pq.write_table(t, tmp_path / "train.parquet")
    out = tmp_path / "config.yaml"
    r = runner.invoke(app, ["init", str(tmp_path / "train.parquet"), "-o", str(out), "--label", "click"])
    assert r.exit_code == 0, r.output
    feats = {f["name"]: f for f in yaml.safe_load(out.read_text())["features"]}
    assert feats["hist_space"]["type"] == "sequence" and feats["hist_space"]["shares"] == "item_id"
    assert feats["hist_space"].get("separator", " ") == " "
    assert feats["hist_pipe"]["type"] == "sequence" and feats["hist_pipe"]["shares"] == "item_id"
    assert feats["hist_pipe"]["separator"] == "|"
    assert feats["tags"]["type"] == "multi_categorical" and "shares" not in feats["tags"]
    r = runner.invoke(app, ["validate", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.count("ids of item_id") == 2 and "separator" not in r.output, r.output


def test_an_empty_separator_is_one_line_not_a_traceback(tmp_path):
    """YAML reads a bare `separator: |` as an empty string, which pyarrow cannot split on (a traceback
    from validate and train before): the config says so, naming the feature and how to quote it."""
    raw = seq_config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw).replace("name: hist\n", "name: hist\n  separator: |\n"))
    assert next(f for f in yaml.safe_load(path.read_text())["features"] if f["name"] == "hist")["separator"] == ""
    for cmd in ("validate", "train"):
        r = runner.invoke(app, [cmd, str(path)])
        assert r.exit_code == 2, r.output
        assert "features[" in r.output and "('hist').separator: is empty; quote the character in YAML" in r.output, r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
