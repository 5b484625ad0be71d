"""Row-wise embedding updates: a step changes only the rows its batch touched."""
import pytest
import torch

from conftest import base_config, cfg_of
from distill.run import train
from distill.training.common import Optimizers
from distill.training.loop import Plan


def test_sparse_step_moves_only_touched_rows(tmp_path):
    raw = base_config(tmp_path)
    raw["train"].update(sparse_embeddings=True, epochs=1)
    raw["distillation"] = {"mode": "none"}
    run = train(cfg_of(raw), quiet=True)
    model = run.models["baseline"]
    table = model.embedding.tables["user"]
    assert table.sparse
    opt = Plan.from_config(cfg_of(raw)).optimizer(model)
    assert isinstance(opt, Optimizers) and isinstance(opt.parts[0], torch.optim.SparseAdam)
    before = table.weight.detach().clone()
    from distill.data.batch import Batch
    ids = torch.tensor([3, 5, 5])
    feats = {"user": ids, "item": torch.tensor([2, 2, 2]), "price": torch.zeros(3, 2), "tags": torch.tensor([[2], [3], [0]])}
    model.train()
    opt.zero_grad()
    model(Batch(feats)).sum().backward()
    assert table.weight.grad.is_sparse
    opt.step()
    changed = (table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 5]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sparse_embeddings_train_in_sync_with_shared_tables_and_resume(tmp_path, precision):
    raw = base_config(tmp_path)
    raw["train"].update(sparse_embeddings=True, epochs=2, checkpoint_every=3, precision=precision)
    raw["distillation"] = {"mode": "sync", "share_embeddings": True}
    run = train(cfg_of(raw), quiet=True)
    assert run.metrics["teacher"]["test"]["auc"] > 0.7
