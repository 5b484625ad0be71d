"""Config errors name the key and suggest the closest one; schema and mode rules (recipes.check)."""
import copy

import pytest

from distill import recipes, schema
from distill.config import config_from_dict, load_config
from distill.errors import DistillError

from conftest import base_config


def err(raw) -> str:
    with pytest.raises(DistillError) as e:
        cfg = config_from_dict(raw)
        recipes.check(cfg)
    return str(e.value)


def test_unknown_key_suggests_the_closest(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["train"]["epocs"] = 3
    assert "unknown key 'train.epocs' (did you mean 'epochs'?)" in err(raw)
    raw = copy.deepcopy(raw_config)
    raw["distillation"]["temprature"] = 2
    assert "did you mean 'temperature'" in err(raw)
    raw = copy.deepcopy(raw_config)
    raw["feautres"] = []
    assert "did you mean 'features'" in err(raw)


def test_unknown_feature_key_names_the_feature(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["features"][2]["typ"] = "numeric"
    assert "features[2] ('price').typ" in err(raw)


def test_feature_listed_twice(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["features"].append({"name": "price", "type": "numeric"})
    assert "feature 'price' is listed twice" in err(raw)


def test_student_cannot_read_a_privileged_feature(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["student"]["features"] = ["user", "intent"]
    assert "student.features: 'intent' is privileged" in err(raw)
    raw["student"]["features"] = "all"  # 'all' would include privileged features
    assert "is privileged" in err(raw)


def test_student_features_are_serving_features_by_default(raw_config):
    cfg = config_from_dict(raw_config)
    assert [f.name for f in schema.model_features(cfg, "student")] == ["user", "item", "price", "tags"]
    assert [f.name for f in schema.model_features(cfg, "teacher")] == ["user", "item", "price", "tags", "intent", "dwell"]
    cfg.teacher.features = "privileged"  # LUPI
    assert [f.name for f in schema.model_features(cfg, "teacher")] == ["intent", "dwell"]


def test_task_balance_is_an_alias_for_one_minus_weight(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["distillation"] = {"mode": "sync", "task_balance": 0.28}
    assert config_from_dict(raw).distillation.weight == pytest.approx(0.72)
    raw["distillation"]["weight"] = 0.5
    assert "not both" in err(raw)


@pytest.mark.parametrize("section,value,message", [
    ("distillation", {"mode": "offline"}, "distillation.soft_label"),
    ("distillation", {"mode": "sync", "teacher_checkpoint": "x"}, "only mode 'async'"),
    ("distillation", {"mode": "async", "share_embeddings": True}, "only mode 'sync'"),
    ("distillation", {"weight": 1.5}, "distillation.weight"),
    ("teacher", {"model": "dcn"}, "did you mean 'dcn_v2'"),
    ("student", {"model": "two_tower"}, "student.user_features"),
    ("train", {"optimizer": "lbfgs"}, "train.optimizer"),
])
def test_bad_values_name_the_key(raw_config, section, value, message):
    raw = copy.deepcopy(raw_config)
    raw[section].update(value)
    assert message in err(raw)


def test_warning_when_teacher_has_nothing_to_teach(tmp_path):
    raw = base_config(tmp_path, teacher={"model": "dnn", "hidden": [16], "embedding_dim": 8, "features": "serving"})
    warnings = recipes.check(config_from_dict(raw))
    assert any("nothing to transfer" in w for w in warnings)


def test_load_config_errors_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    with pytest.raises(DistillError, match="config file not found"):
        load_config(p)
    p.write_text("data: [unclosed")
    with pytest.raises(DistillError, match=f"{p}: not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(DistillError, match="expected a mapping"):
        load_config(p)


def test_overrides_apply_dotted_keys(config_file):
    cfg = load_config(config_file, {"train.epochs": 7, "distillation.schedule.type": "delayed"})
    assert cfg.train.epochs == 7 and cfg.distillation.schedule.type == "delayed"
