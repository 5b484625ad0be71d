"""The training modes end to end through the Python API, on small generated data."""
import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import spy_models
from conftest import base_config, cfg_of
from distill.data.batch import MissingFeatureError
from distill.errors import DistillError
from distill.run import load_run, train

PRIVILEGED = {"intent", "dwell"}
MODES = {
    "sync": {"mode": "sync"},
    "sync_shared": {"mode": "sync", "share_embeddings": True, "separate_embeddings": ["user"]},
    "async": {"mode": "async"},
    "offline": {"mode": "offline", "soft_label": "soft"},
    "none": {"mode": "none"},
}


def with_soft_label(raw):
    """Add an offline teacher score column to the training file."""
    path = raw["data"]["train"]
    t = pq.read_table(path)
    soft = 1 / (1 + np.exp(-1.8 * t["intent"].to_numpy()))
    pq.write_table(t.append_column("soft", [soft]), path)


@pytest.mark.parametrize("model", ["dnn", "wide_deep", "deepfm", "dcn_v2", "two_tower"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_student_never_sees_a_privileged_feature(tmp_path, model, mode):
    raw = base_config(tmp_path, n_train=200)
    if mode == "offline":
        with_soft_label(raw)
    raw["distillation"] = MODES[mode]
    raw["train"].update(epochs=1, batch_size=64)
    raw["student"] = {"model": "module:spy_models:spy", "embedding_dim": 8, "hidden": [8],
                      "user_features": ["user"], "options": {"inner": model, "tag": "student"}}
    raw["teacher"] = {"model": "module:spy_models:spy", "embedding_dim": 8, "hidden": [8],
                      "user_features": ["user"], "options": {"inner": "dnn", "tag": "teacher"}}
    spy_models.SEEN.clear()
    run = train(cfg_of(raw), quiet=True)
    student_batches = [feats for tag, feats, _ in spy_models.SEEN if tag == "student"]
    assert student_batches, "the student was never called"
    assert all(not (feats & PRIVILEGED) for feats in student_batches)
    assert run.features["student" if mode != "none" else "baseline"] == ["user", "item", "price", "tags"]
    if mode in ("sync", "sync_shared", "async"):
        assert any(feats >= PRIVILEGED for tag, feats, _ in spy_models.SEEN if tag == "teacher")


def test_a_student_that_reads_a_privileged_feature_fails_loudly(tmp_path):
    raw = base_config(tmp_path, n_train=100)
    raw["student"] = {"model": "module:spy_models:greedy"}
    with pytest.raises(MissingFeatureError, match="'intent' is not in this batch"):
        train(cfg_of(raw), quiet=True)


def test_user_factory_must_return_a_module(tmp_path):
    raw = base_config(tmp_path, n_train=100)
    raw["student"] = {"model": "module:spy_models:not_a_module"}
    with pytest.raises(DistillError, match="not an nn.Module"):
        train(cfg_of(raw), quiet=True)
    raw["student"] = {"model": "module:no_such_pkg.x:f"}
    with pytest.raises(DistillError, match="cannot import 'no_such_pkg.x'"):
        train(cfg_of(raw), quiet=True)


def test_sync_teacher_learns_from_its_own_loss_alone(tmp_path):
    """λ changes only the student's objective: the teacher ends identical for λ = 0 and λ = 1."""
    teachers = []
    for weight in (0.0, 1.0):
        raw = base_config(tmp_path / str(weight) if (tmp_path / str(weight)).mkdir() is None else None, n_train=300)
        raw["distillation"] = {"mode": "sync", "weight": weight}
        raw["train"].update(baseline=False, early_stopping=None)  # stopping follows the student too
        run = train(cfg_of(raw), quiet=True)
        teachers.append(run.models["teacher"].state_dict())
    for name in teachers[0]:
        assert torch.equal(teachers[0][name], teachers[1][name]), name


def test_sync_step_log_has_every_term_and_lambda_follows_the_schedule(tmp_path):
    raw = base_config(tmp_path, n_train=640)
    raw["distillation"] = {"mode": "sync", "weight": 0.8, "schedule": {"type": "delayed", "steps": 4}}
    raw["train"].update(epochs=1, batch_size=64, baseline=False)
    run = train(cfg_of(raw), quiet=True)
    steps = [json.loads(line) for line in (run.path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(10))
    assert [s["lambda"] for s in steps] == [0.0] * 4 + [0.8] * 6
    for s in steps:
        assert {"L_s", "L_d", "L_t", "loss"} <= set(s)
        assert s["loss"] == pytest.approx(s["L_t"] + (1 - s["lambda"]) * s["L_s"] + s["lambda"] * s["L_d"], rel=1e-5)


def test_shared_embeddings_are_shared_in_the_saved_student(tmp_path):
    raw = base_config(tmp_path)
    raw["distillation"] = MODES["sync_shared"]
    run = train(cfg_of(raw), quiet=True)
    info = json.loads((run.path / "run.json").read_text())
    assert info["shared_tables"] == ["item", "tags"]  # user is kept separate, numeric features have no table
    t, s = run.models["teacher"].embedding.tables, run.models["student"].embedding.tables
    assert torch.equal(t["item"].weight, s["item"].weight)
    assert not torch.equal(t["user"].weight, s["user"].weight)


def test_async_computes_soft_labels_once_whatever_the_epochs(tmp_path):
    raw = base_config(tmp_path, n_train=400)
    raw["distillation"] = {"mode": "async"}
    raw["train"]["baseline"] = False
    teacher_run = train(cfg_of(raw), quiet=True)
    calls = {}
    for epochs in (1, 3):
        r = copy.deepcopy(raw)
        r["output"] = str(tmp_path / f"student{epochs}")
        r["distillation"]["teacher_checkpoint"] = str(teacher_run.path)
        r["train"]["epochs"] = epochs
        r["teacher"] = {"model": "dnn", "hidden": [32, 16], "embedding_dim": 8}
        spy_models.SEEN.clear()
        import distill.phases as p
        seen = []
        original = p.cache_logits
        p.cache_logits = lambda teacher, loader, **kw: seen.append(loader.num_rows) or original(teacher, loader, **kw)
        try:
            run = train(cfg_of(r), quiet=True)
        finally:
            p.cache_logits = original
        calls[epochs] = seen
        assert "teacher" in run.models
        # the loaded teacher is the checkpoint's, unchanged
        for k, v in teacher_run.models["teacher"].state_dict().items():
            assert torch.equal(v, run.models["teacher"].state_dict()[k])
    assert calls[1] == calls[3] == [400]


def test_async_rejects_a_checkpoint_from_another_schema(tmp_path):
    raw = base_config(tmp_path, n_train=200)
    raw["distillation"] = {"mode": "async"}
    raw["train"]["baseline"] = False
    teacher_run = train(cfg_of(raw), quiet=True)
    r = copy.deepcopy(raw)
    r["output"] = str(tmp_path / "other")
    r["features"][2]["type"] = "categorical"
    r["distillation"]["teacher_checkpoint"] = str(teacher_run.path)
    with pytest.raises(DistillError, match="another schema.*'price'"):
        train(cfg_of(r), quiet=True)
    r["distillation"]["teacher_checkpoint"] = str(tmp_path / "nowhere")
    with pytest.raises(DistillError, match="holds no teacher.safetensors"):
        train(cfg_of(r), quiet=True)


def test_offline_soft_labels_are_validated(tmp_path):
    raw = base_config(tmp_path, n_train=200)
    t = pq.read_table(raw["data"]["train"])
    pq.write_table(t.append_column("soft", [t["price"].to_numpy()]), raw["data"]["train"])  # not probabilities
    raw["distillation"] = {"mode": "offline", "soft_label": "soft"}
    with pytest.raises(DistillError, match="soft label 'soft' must be a probability"):
        train(cfg_of(raw), quiet=True)


def test_early_stopping_keeps_the_best_validation_weights(tmp_path):
    raw = base_config(tmp_path)
    raw["train"].update(epochs=6, lr=0.05, early_stopping={"metric": "auc", "patience": 2})
    run = train(cfg_of(raw), quiet=True)
    evals = [json.loads(line) for line in (run.path / "evals.jsonl").read_text().splitlines()]
    best_student = max(e["auc"] for e in evals if e["model"] == "student")
    best_baseline = max(e["auc"] for e in evals if e["model"] == "baseline")
    assert run.metrics["student"]["valid"]["auc"] == pytest.approx(best_student, abs=1e-9)
    assert run.metrics["baseline"]["valid"]["auc"] == pytest.approx(best_baseline, abs=1e-9)


def test_same_seed_same_result_and_the_run_reloads_identically(tmp_path):
    raw = base_config(tmp_path)
    a = train(cfg_of(raw), output=tmp_path / "a", quiet=True)
    b = train(cfg_of(raw), output=tmp_path / "b", quiet=True)
    assert a.metrics == b.metrics
    test = pq.read_table(raw["data"]["test"])
    again = load_run(tmp_path / "a")
    assert np.array_equal(a.predict(test), again.predict(test))
    assert set(again.models) == {"teacher", "student", "baseline"}


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_other_tasks_train_and_report_their_metrics(tmp_path, task):
    raw = base_config(tmp_path)
    for split in ("train", "valid", "test"):
        t = pq.read_table(raw["data"][split])
        intent = t["intent"].to_numpy()
        target = np.digitize(intent, [-0.5, 0.5]) if task == "multiclass" else 3 * intent + 10
        pq.write_table(t.append_column("target", [target]), raw["data"][split])
    raw["task"] = {"type": task, "label": "target"}
    raw["distillation"] = {"mode": "sync", "temperature": 2.0}
    raw["train"]["epochs"] = 8
    run = train(cfg_of(raw), quiet=True)
    m = run.metrics
    key = "accuracy" if task == "multiclass" else "rmse"
    assert set(m) == {"teacher", "student", "baseline"}
    if task == "multiclass":
        assert m["teacher"]["test"]["accuracy"] > 0.6  # three classes; the teacher sees the intent
        assert run.predict(raw["data"]["test"]).shape == (300, 3)
    else:
        assert m["teacher"]["test"]["rmse"] < m["baseline"]["test"]["rmse"]
        assert abs(run.predict(raw["data"]["test"]).mean() - 10) < 1.5  # values on the label's scale
    assert key in m["student"]["test"]


def test_nan_and_inf_are_filled_and_counted(tmp_path):
    raw = base_config(tmp_path)
    t = pq.read_table(raw["data"]["train"])
    price = t["price"].to_numpy().copy()
    price[:5] = np.nan
    price[5:7] = np.inf
    pq.write_table(t.set_column(t.column_names.index("price"), "price", [price]), raw["data"]["train"])
    run = train(cfg_of(raw), quiet=True)
    info = json.loads((run.path / "run.json").read_text())
    assert info["filled_values"]["price"] == 7
    assert np.isfinite(run.metrics["student"]["test"]["auc"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bf16_precision_multiplies_in_bf16_and_keeps_float32_weights(tmp_path, mode):
    seen: dict[str, dict[bool, set]] = {}  # precision -> training mode -> dtypes of Linear outputs

    def record(module, args, out):
        if isinstance(module, torch.nn.Linear):
            seen[precision].setdefault(module.training, set()).add(out.dtype)

    runs = {}
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        for precision in ("fp32", "bf16"):
            seen[precision] = {}
            raw = base_config(tmp_path, n_train=1200, distillation={"mode": mode}, train={"precision": precision})
            runs[precision] = train(cfg_of(raw), output=tmp_path / precision, quiet=True)
    finally:
        handle.remove()
    assert seen["fp32"][True] == {torch.float32}
    assert seen["bf16"][True] == {torch.bfloat16}  # every training forward pass multiplied in bf16
    if mode == "sync":
        assert seen["bf16"][False] == {torch.float32}  # validation runs the float32 model, as exported
    for model in runs["bf16"].models.values():
        assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    fp32, bf16 = (runs[p].metrics["teacher"]["test"]["auc"] for p in ("fp32", "bf16"))
    assert bf16 > 0.75 and abs(bf16 - fp32) < 0.02  # the same learning, bf16 rounding aside
