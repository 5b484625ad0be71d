"""Conformance over every registered model: logits shape, privileged isolation, save/load."""
import pytest
import torch

from distill.data.batch import Batch, MissingFeatureError
from distill.models import MODELS
from distill.models.parts import FeatureInfo, ModelSpec, share_tables

FEATURES = (
    FeatureInfo("user", "categorical", 12),
    FeatureInfo("item", "categorical", 9),
    FeatureInfo("price", "numeric"),
    FeatureInfo("tags", "multi_categorical", 7),
    FeatureInfo("intent", "numeric"),  # privileged in these tests
    # a behaviour sequence over the item's ids and table (the din model attends to it with 'item')
    FeatureInfo("hist", "sequence", 9, shares="item", encoder="self_attention", max_len=4),
)
SERVING = ["user", "item", "price", "tags", "hist"]


def batch(n=6, names=None):
    g = torch.Generator().manual_seed(0)
    feats = {
        "user": torch.randint(0, 12, (n,), generator=g),
        "item": torch.randint(0, 9, (n,), generator=g),
        "price": torch.randn(n, 2, generator=g),
        "tags": torch.randint(0, 7, (n, 3), generator=g),
        "intent": torch.randn(n, 2, generator=g),
        "hist": torch.randint(0, 9, (n, 4), generator=g),  # 0s are padding
    }
    b = Batch(feats, y=torch.zeros(n))
    return b.select(names) if names else b


def spec(features, out_dim=1, **kw):
    return ModelSpec(features=features, out_dim=out_dim, hidden=(8,), embedding_dim=4, user_features=("user",), **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("out_dim", [1, 3])
def test_logits_shape(name, out_dim):
    if name == "two_tower" and out_dim > 1:
        with pytest.raises(ValueError):
            MODELS[name](spec(FEATURES, out_dim))
        return
    model = MODELS[name](spec(FEATURES, out_dim))
    out = model(batch())
    assert out.shape == ((6,) if out_dim == 1 else (6, out_dim))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_student_on_serving_features_never_touches_privileged(name):
    serving = tuple(f for f in FEATURES if f.name in SERVING)
    model = MODELS[name](spec(serving))
    b = batch(names=SERVING)
    out1 = model(b)
    # The student's batch has no privileged key at all...
    assert "intent" not in b.features
    # ...and changing privileged values in a full batch leaves its output bit-identical.
    full = batch()
    full2 = Batch({**full.features, "intent": full.features["intent"] * 100 + 7})
    assert torch.equal(model(full.select(SERVING)), model(full2.select(SERVING)))
    assert torch.equal(out1, model(full.select(SERVING)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_asking_for_a_missing_feature_fails_loudly(name):
    model = MODELS[name](spec(FEATURES))  # built to read 'intent'
    with pytest.raises(MissingFeatureError, match="feature 'intent' is not in this batch.*privileged"):
        model(batch(names=SERVING))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_parameter_is_left_unused(name):
    model = MODELS[name](spec(FEATURES))
    model(batch()).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"{name}: parameters without gradient: {unused}"


def test_shared_tables_are_one_module_and_get_gradients_from_both_paths():
    teacher = MODELS["dnn"](spec(FEATURES))
    student = MODELS["two_tower"](spec(tuple(f for f in FEATURES if f.name in SERVING)))
    shared = share_tables(teacher, student, ["item", "tags"])
    assert shared == ["item", "tags"]
    assert student.embedding.tables["item"] is teacher.embedding.tables["item"]
    assert student.embedding.tables["user"] is not teacher.embedding.tables["user"]
    from distill.losses import distill_loss, hard_loss
    b = batch()
    y = torch.tensor([0.0, 1, 0, 1, 1, 0])
    t_logits, s_logits = teacher(b), student(b.select(SERVING))
    # L_d alone: the shared table and the student move, the teacher's own parts do not.
    distill_loss(s_logits, t_logits, "binary").backward(retain_graph=True)
    assert teacher.embedding.tables["item"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in teacher.named_parameters() if not n.startswith("embedding.tables.item") and not n.startswith("embedding.tables.tags"))
    # L_t reaches the shared table through the teacher too.
    teacher.zero_grad(set_to_none=True)
    student.zero_grad(set_to_none=True)
    hard_loss(t_logits, y, "binary").backward()
    assert teacher.embedding.tables["item"].weight.grad.abs().sum() > 0
    assert student.embedding.tables["user"].weight.grad is None
