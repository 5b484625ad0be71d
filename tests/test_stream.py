"""Streaming from Parquet row groups: each row once per epoch, deterministic, resumable, and the
encoders fitted in one pass equal the in-memory ones."""
import pyarrow.parquet as pq
import pytest
import torch

from conftest import base_config, cfg_of, make_table
from distill.data.dataset import Encoders, load_splits
from distill.data.stream import StreamingLoader


@pytest.fixture
def streamed(tmp_path):
    raw = base_config(tmp_path)
    pq.write_table(make_table(1000, 1), raw["data"]["train"], row_group_size=90)  # 12 uneven row groups
    raw["data"].update(streaming=True, shuffle_buffer=250, prefetch=2)
    raw["train"]["batch_size"] = 64
    return cfg_of(raw)


def test_each_row_once_per_epoch_in_a_seeded_order(streamed):
    splits = load_splits(streamed)
    loader = StreamingLoader(streamed, splits.encoders)
    assert loader.num_rows == 1000 and len(loader) == 16
    epochs = []
    for epoch in (0, 1, 0):
        batches = list(loader.epoch(epoch))
        rows = torch.cat([b.index for b in batches])
        assert len(batches) == 16 and all(len(b) == 64 for b in batches[:-1])
        assert sorted(rows.tolist()) == list(range(1000))
        epochs.append(rows)
    assert torch.equal(epochs[0], epochs[2])  # same epoch, same order
    assert not torch.equal(epochs[0], epochs[1])


def test_resuming_mid_epoch_yields_the_same_remaining_batches(streamed):
    loader = StreamingLoader(streamed, load_splits(streamed).encoders)
    full = [b.index for b in loader.epoch(3)]
    rest = [b.index for b in loader.epoch(3, start=7)]
    assert len(rest) == len(full) - 7
    assert all(torch.equal(a, b) for a, b in zip(full[7:], rest))


def test_batches_carry_the_rows_they_claim(streamed):
    """Labels in a streamed batch are those of the rows its index names."""
    table = pq.read_table(streamed.data.train)
    clicks = torch.tensor(table["click"].to_numpy(), dtype=torch.float32)
    loader = StreamingLoader(streamed, load_splits(streamed).encoders)
    for b in loader.epoch(0):
        assert torch.equal(b.y, clicks[b.index])
    ordered = torch.cat([b.index for b in loader.ordered(100)])
    assert torch.equal(ordered, torch.arange(1000))


def test_streaming_fit_equals_in_memory_fit(streamed):
    streaming = load_splits(streamed).encoders
    table = pq.read_table(streamed.data.train)
    memory = Encoders.fit(streamed, table, "train")
    for name, enc in memory.features.items():
        other = streaming.features[name]
        assert other.kind == enc.kind
        if enc.kind != "numeric":
            assert other.index.vocab == enc.index.vocab and other.index.hash_buckets == enc.index.hash_buckets
        else:
            assert other.mean == pytest.approx(enc.mean) and other.std == pytest.approx(enc.std)


def test_streaming_trains_every_mode_end_to_end(tmp_path, streamed):
    from distill.run import train
    for mode, precision in (("sync", "fp32"), ("async", "fp32"), ("none", "fp32"), ("sync", "bf16")):
        cfg = streamed.model_copy(deep=True)
        cfg.distillation.mode = mode
        cfg.train.epochs = 1
        cfg.train.precision = precision
        run = train(cfg, output=tmp_path / f"{mode}_{precision}", quiet=True)
        assert run.metrics["baseline"]["test"]["auc"] > 0.5


def test_streaming_needs_parquet(tmp_path):
    from distill.errors import DistillError
    raw = base_config(tmp_path)
    import pyarrow.csv as pacsv
    pacsv.write_csv(make_table(100, 1), tmp_path / "t.csv")
    raw["data"].update(train=str(tmp_path / "t.csv"), streaming=True)
    with pytest.raises(DistillError, match="t.csv: data.streaming reads Parquet"):
        load_splits(cfg_of(raw))
