"""Encoders: vocabularies with an OOV bucket, stable hashing, standardising with missing flags, bags."""
import numpy as np
import pyarrow as pa
import pytest

from distill.config import FeatureConfig, TaskConfig
from distill.data.dataset import Encoders
from distill.data.encoders import OOV, PAD, LabelEncoder, feature_from_dict, fit_feature
from distill.errors import DistillError


def col(values, type_=None):
    return pa.chunked_array([pa.array(values, type_)])


def test_categorical_vocab_oov_and_missing():
    enc = fit_feature(FeatureConfig(name="c", type="categorical"), col(["b", "a", "b", None]), "t")
    codes, missing = enc.encode(col(["a", "b", "zzz", None]), "t")
    assert list(codes) == [2, 3, OOV, OOV] and missing == 1
    assert enc.cardinality == 4


def test_min_count_sends_rare_values_to_oov():
    enc = fit_feature(FeatureConfig(name="c", type="categorical", min_count=2), col(["a", "a", "b"]), "t")
    assert list(enc.encode(col(["a", "b"]), "t")[0]) == [2, OOV]


def test_integers_and_whole_floats_are_the_same_category():
    enc = fit_feature(FeatureConfig(name="c", type="categorical"), col([1, 2, 3]), "t")
    assert list(enc.encode(col([2.0, 3.0, 7.0]), "t")[0]) == [3, 4, OOV]


def test_nan_and_inf_in_a_float_category_are_missing_not_categories():
    enc = fit_feature(FeatureConfig(name="c", type="categorical"), col([1.0, float("nan"), 2.0, float("inf")]), "t")
    assert enc.index.vocab == ["1", "2"]
    codes, missing = enc.encode(col([float("nan"), float("-inf"), 2.0, None]), "t")
    assert list(codes) == [OOV, OOV, 3, OOV] and missing == 3
    frac = fit_feature(FeatureConfig(name="f", type="categorical"), col([1.5, float("nan")]), "t")
    assert frac.index.vocab == ["1.5"]  # not "nan": the string form is for values, not for missing ones


def test_hashing_is_stable_and_in_range():
    spec = FeatureConfig(name="h", type="categorical", hash_buckets=10)
    enc = fit_feature(spec, col(["x"]), "t")
    a, _ = enc.encode(col(["u1", "u2", "u1", None]), "t")
    b, _ = feature_from_dict(enc.to_dict()).encode(col(["u1", "u2"]), "t")
    assert a[0] == a[2] == b[0] and a[1] == b[1] and a[3] == OOV
    assert a[:3].min() >= 2 and a[:3].max() < 12 and enc.cardinality == 12


def test_numeric_standardised_with_train_stats_and_missing_flagged():
    enc = fit_feature(FeatureConfig(name="x", type="numeric"), col([1.0, 3.0, None, float("nan")]), "t")
    assert enc.mean == 2.0 and enc.std == 1.0
    out, missing = enc.encode(col([5.0, None, float("inf"), float("nan")]), "t")
    assert out.shape == (4, 2) and missing == 3
    assert out[0].tolist() == [3.0, 0.0]
    assert out[1:].tolist() == [[0.0, 1.0]] * 3


def test_numeric_column_of_strings_is_an_error_naming_it():
    enc = fit_feature(FeatureConfig(name="x", type="numeric"), col([1.0]), "t")
    with pytest.raises(DistillError, match="t: column 'x' is string, expected numbers"):
        enc.encode(col(["a", "b"]), "t")


def test_multi_categorical_from_strings_and_lists():
    spec = FeatureConfig(name="m", type="multi_categorical", max_len=3)
    enc = fit_feature(spec, col(["a b", "b c"]), "t")
    out, empty = enc.encode(col(["a b", "c", "", "a b c zz q"]), "t")
    a, b, c = 2, 3, 4
    assert out.tolist() == [[a, b, PAD], [c, PAD, PAD], [PAD, PAD, PAD], [a, b, c]]
    out2, _ = enc.encode(col([["a", "b"], ["c"], []], pa.list_(pa.string())), "t")
    assert out2.tolist() == [[a, b], [c, PAD], [PAD, PAD]]


def test_binary_labels_must_be_zero_or_one():
    enc = LabelEncoder.fit(TaskConfig(type="binary", label="y"), col([0, 1]), "f")
    assert enc.encode(col([0, 1, 1]), "y", "f").tolist() == [0, 1, 1]
    with pytest.raises(DistillError, match="f: label 'y' must be 0 or 1 for a binary task; found 2.0"):
        enc.encode(col([0, 2]), "y", "f")
    with pytest.raises(DistillError, match="missing"):
        enc.encode(col([0, None]), "y", "f")


def test_multiclass_classes_come_from_train_and_unseen_is_an_error():
    enc = LabelEncoder.fit(TaskConfig(type="multiclass", label="y"), col(["cat", "dog", "cat"]), "f")
    assert enc.classes == ["cat", "dog"] and enc.encode(col(["dog"]), "y", "f").tolist() == [1]
    with pytest.raises(DistillError, match="not in the training split: bird"):
        enc.encode(col(["bird"]), "y", "f")


def test_regression_label_is_standardised():
    enc = LabelEncoder.fit(TaskConfig(type="regression", label="y"), col([1.0, 3.0]), "f")
    assert enc.encode(col([3.0]), "y", "f").tolist() == [1.0]


def test_missing_column_names_the_file_and_column(raw_config):
    from distill.config import config_from_dict
    cfg = config_from_dict(raw_config)
    table = pa.table({"user": [1], "click": [0]})
    with pytest.raises(DistillError, match="train.parquet: missing column 'item'"):
        Encoders.fit(cfg, table, "train.parquet")


def test_encoders_round_trip_through_json(raw_config, tmp_path):
    import pyarrow.parquet as pq
    from distill.config import config_from_dict
    cfg = config_from_dict(raw_config)
    table = pq.read_table(raw_config["data"]["train"])
    enc = Encoders.fit(cfg, table, "train")
    enc.save(tmp_path / "e.json")
    again = Encoders.load(tmp_path / "e.json")
    a, b = enc.encode(cfg, table, "t"), again.encode(cfg, table, "t")
    for name in a.features:
        assert np.array_equal(a.features[name].numpy(), b.features[name].numpy())


def test_integer_columns_encode_like_their_string_form():
    """Integers take a fast path (no string casting); the codes must equal the string path's."""
    spec = FeatureConfig(name="c", type="categorical")
    ints = fit_feature(spec, col([5, -3, 12, 5, None]), "t")
    strs = fit_feature(spec, col(["5", "-3", "12", "5", None]), "t")
    assert ints.index.vocab == strs.index.vocab == ["-3", "12", "5"]
    probe_ints = col([12, -3, 99, None, 5])
    probe_strs = col(["12", "-3", "99", None, "5"])
    assert list(ints.encode(probe_ints, "t")[0]) == list(strs.encode(probe_strs, "t")[0]) == [3, 2, OOV, OOV, 4]
    assert list(strs.encode(probe_ints, "t")[0]) == list(ints.encode(probe_strs, "t")[0])  # files may disagree on type
    hashed = fit_feature(FeatureConfig(name="h", type="categorical", hash_buckets=7), col([1]), "t")
    assert list(hashed.encode(col([41, 7]), "t")[0]) == list(hashed.encode(col(["41", "7"]), "t")[0])
