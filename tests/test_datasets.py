"""Built-in data sets, user data files and batching: shapes, determinism, and every bad file."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.training.csv_files import load_csv
from nnspec.training.data import from_user_data
from nnspec.training.datasets import (
    CHAR_ALPHABET,
    DATASETS,
    Dataset,
    load_dataset,
)
from nnspec.training.loaders import (
    DataError,
    UserData,
    iterate_minibatches,
    load_npy,
    load_npz,
    train_val_split,
)

# ---------------------------------------------------------------- every built-in set


@pytest.mark.parametrize("name", list(DATASETS))
def test_builtin_sets_are_consistent(name: str) -> None:
    data = load_dataset(name)
    assert isinstance(data, Dataset) and data.name == name
    assert data.description and data.attribution and DATASETS[name].summary
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        assert x.dtype in (np.float32, np.int64)
        assert x.shape[1:] == data.input_shape
        assert len(x) == len(y) > 0
        if data.task == "regression":
            assert data.num_classes is None and y.dtype == np.float32
            assert y.shape[1:] == (1,)
        else:
            assert y.dtype == np.int64
            assert 0 <= y.min() and y.max() < data.num_classes
            assert y.shape[1:] == {"sequence_classification": (x.shape[1],),
                                   "segmentation": x.shape[2:]}.get(data.task, ())
        if x.dtype == np.float32:
            assert np.all(np.isfinite(x))
    assert data.class_names is None or len(data.class_names) == data.num_classes
    assert math.isfinite(data.baseline_loss()) and data.baseline_loss() > 0


@pytest.mark.parametrize("name", list(DATASETS))
def test_builtin_sets_are_deterministic_by_seed(name: str) -> None:
    first, again, other = (load_dataset(name, seed=seed) for seed in (3, 3, 4))
    for field in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    changed = not np.array_equal(first.x_train, other.x_train)
    assert changed == (name != "digits")  # digits keeps one fixed split on purpose


def test_registry_options_are_the_makers_keyword_defaults() -> None:
    assert DATASETS["moons"].options == {"n": 400, "noise": 0.1, "val": 0.2}
    assert DATASETS["digits"].options == {"shape": (64,)}
    assert load_dataset("moons", n=100, val=0.25).x_val.shape == (25, 2)


# ---------------------------------------------------------------- digits


DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_are_the_real_uci_set() -> None:
    data = load_dataset("digits")
    assert len(data.x_train) + len(data.x_val) == 1797
    assert (len(data.x_train), len(data.x_val)) == (1437, 360)
    labels = np.concatenate([data.y_train, data.y_val])
    assert np.bincount(labels).tolist() == DIGIT_COUNTS
    pixels = np.concatenate([data.x_train, data.x_val])
    assert pixels.dtype == np.float32 and pixels.shape == (1797, 64)
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    np.testing.assert_array_equal(np.unique(pixels * 16), np.arange(17))
    assert "Alpaydin" in data.attribution and "CC BY 4.0" in data.attribution


def test_digits_image_view_is_a_reshape_of_the_flat_view() -> None:
    flat = load_dataset("digits")
    image = load_dataset("digits", shape=[1, 8, 8])
    assert image.input_shape == (1, 8, 8) and image.x_train.shape == (1437, 1, 8, 8)
    np.testing.assert_array_equal(image.x_val.reshape(360, 64), flat.x_val)
    np.testing.assert_array_equal(image.y_val, flat.y_val)


@pytest.mark.parametrize("shape", [[3, 3], [0, 64], "image", [1.5, 8], []])
def test_digits_rejects_views_that_are_not_64_pixels(shape: object) -> None:
    with pytest.raises(DataError, match="multiplying to 64"):
        load_dataset("digits", shape=shape)


# ---------------------------------------------------------------- what each generated set means


def test_xor_without_noise_labels_by_quadrant() -> None:
    data = load_dataset("xor", noise=0.0)
    x, y = data.x_train, data.y_train
    np.testing.assert_array_equal(y, (x[:, 0] * x[:, 1] < 0).astype(np.int64))


def test_moons_without_noise_lie_on_their_half_circles() -> None:
    data = load_dataset("moons", noise=0.0)
    x, y = data.x_train, data.y_train
    upper, lower = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.hypot(*upper.T), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0, rtol=1e-5)
    assert abs(np.mean(y) - 0.5) < 0.1


def test_spirals_have_the_requested_number_of_arms() -> None:
    data = load_dataset("spirals", classes=3, n=300)
    assert data.num_classes == 3 and set(np.unique(data.y_train)) == {0, 1, 2}


def test_sine_targets_follow_the_curve() -> None:
    data = load_dataset("sine", noise=0.0)
    assert data.x_train.min() >= -math.pi and data.x_train.max() <= math.pi
    np.testing.assert_allclose(data.y_train, np.sin(data.x_train), atol=1e-6)
    assert 0.4 < data.baseline_loss() < 0.6  # variance of sin on [-pi, pi] is 1/2


def test_adding_targets_sum_the_two_marked_values() -> None:
    data = load_dataset("adding", length=10)
    x, y = data.x_train, data.y_train
    markers = x[:, :, 1]
    assert np.all(markers.sum(axis=1) == 2)
    assert np.all(markers[:, :5].sum(axis=1) == 1)  # one mark in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    assert abs(data.baseline_loss() - 1 / 6) < 0.03


def test_recall_label_is_the_digit_at_the_marked_step() -> None:
    data = load_dataset("recall", length=12)
    x, y = data.x_train, data.y_train
    assert x.shape[1:] == (12, 11)
    assert np.all(x[:, :, :10].sum(axis=2) == 1)  # one-hot digit at every step
    marked = np.argmax(x[:, :, 10], axis=1)
    assert np.all(x[:, :, 10].sum(axis=1) == 1) and marked.max() < 6
    np.testing.assert_array_equal(y, np.argmax(x[np.arange(len(x)), marked, :10], axis=1))
    assert abs(data.baseline_loss() - math.log(10)) < 0.05  # chance level


def test_reverse_and_sort_targets() -> None:
    reverse = load_dataset("reverse", length=5, vocab=7)
    np.testing.assert_array_equal(reverse.y_train, reverse.x_train[:, ::-1])
    sort = load_dataset("sort")
    np.testing.assert_array_equal(sort.y_val, np.sort(sort.x_val, axis=1))
    assert reverse.num_classes == 7 and reverse.x_train.max() < 7
    assert abs(sort.baseline_loss() - math.log(10)) < 0.01  # unigram baseline ln(vocab)


def test_char_lm_targets_are_the_next_characters() -> None:
    data = load_dataset("char_lm", length=32)
    assert data.num_classes == len(CHAR_ALPHABET) == 28  # the specs say vocab = 28
    np.testing.assert_array_equal(data.y_train[:, :-1], data.x_train[:, 1:])
    np.testing.assert_array_equal(data.y_train[:-1, -1], data.x_train[1:, 0])
    text = "".join(CHAR_ALPHABET[i] for i in data.x_train[:20].ravel())
    assert ". " in text and "the " in text
    assert 2.5 < data.baseline_loss() < 3.2  # unigram entropy of English-like text


# ---------------------------------------------------------------- asking for sets by name


def test_unknown_data_set_suggests_the_closest_name() -> None:
    with pytest.raises(DataError, match="unknown data set `moon`") as caught:
        load_dataset("moon")
    assert caught.value.hint == "did you mean `moons`?"
    with pytest.raises(DataError) as caught:
        load_dataset("imagenet")
    assert "xor" in caught.value.hint and "digits" in caught.value.hint


def test_unknown_option_suggests_the_closest_option() -> None:
    with pytest.raises(DataError, match="no option `nosie`") as caught:
        load_dataset("moons", nosie=0.2)
    assert caught.value.hint == "did you mean `noise`?"
    with pytest.raises(DataError) as caught:
        load_dataset("digits", colour=True)
    assert caught.value.hint == "its options are: shape"


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("moons", {"n": 0}, "`n` must be a whole number"),
        ("moons", {"n": 2.5}, "`n` must be a whole number"),
        ("xor", {"noise": -1.0}, "`noise` must be a number of 0 or more"),
        ("sine", {"noise": "lots"}, "`noise` must be a number"),
        ("spirals", {"classes": 1}, "`classes` must be a whole number of at least 2"),
        ("sine", {"val": 1.5}, "strictly between 0 and 1"),
        ("reverse", {"vocab": True}, "`vocab` must be a whole number"),
        ("char_lm", {"chars": 100, "length": 64}, "no full window"),
        ("char_lm", {"val": 0}, "strictly between 0 and 1"),
    ],
)
def test_bad_option_values_are_data_errors(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_dataset(name, **options)


# ---------------------------------------------------------------- CSV files


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_csv_with_numeric_class_ids(tmp_path) -> None:
    path = write(tmp_path, "d.csv", "a,b,y\n1,2.5,0\n\n3, -4e-1 ,1\n")
    data = load_csv(path)
    np.testing.assert_array_equal(data.x, np.array([[1, 2.5], [3, -0.4]], dtype=np.float32))
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.y.tolist() == [0, 1] and data.class_names is None


def test_csv_with_string_labels_bom_quotes_and_chosen_features(tmp_path) -> None:
    content = '\ufeffsepal,"pe,tal",species,id\n1,2,setosa,7\n3,4,"virginica",8\n5,6,setosa,9\n'
    data = load_csv(
        write(tmp_path, "iris.csv", content), target="species", features=["pe,tal", "sepal"]
    )
    np.testing.assert_array_equal(data.x, [[2, 1], [4, 3], [6, 5]])
    assert data.y.tolist() == [0, 1, 0] and data.class_names == ("setosa", "virginica")


def test_csv_with_real_valued_target_and_other_delimiter(tmp_path) -> None:
    data = load_csv(
        write(tmp_path, "r.tsv", "x\ttarget\n1\t0.5\n2\t1.5\n"), target="target", delimiter="\t"
    )
    assert data.y.dtype == np.float32 and data.y.tolist() == [0.5, 1.5]


MALFORMED_CSV = {
    "empty": ("", ["the file is empty"]),
    "blank lines only": ("\n  \n\n", ["the file is empty"]),
    "header only": ("a,b,y\n", ["no data rows"]),
    "ragged row": ("a,b,y\n1,2,0\n3,4\n", [":3:", "2 cells", "3 columns"]),
    "too many cells": ("a,b,y\n1,2,0,9\n", [":2:", "4 cells"]),
    "non-numeric cell": ("a,b,y\n1,2,0\n1,abc,1\n", [":3:", "column `b`", "`abc`", "not a number"]),
    "empty cell": ("a,b,y\n1,,0\n", [":2:", "column `b` is empty"]),
    "missing target": ("a,b,label\n1,2,0\n", ["no column named `y`", "a, b, label"]),
    "nan feature": ("a,b,y\n1,2,0\n1,nan,1\n", [":3:", "column `b`", "`nan`", "not a finite"]),
    "inf feature": ("a,b,y\n1,2,0\ninf,2,1\n", [":3:", "column `a`", "`inf`"]),
    "overflowing feature": ("a,b,y\n1,1e300,0\n", [":2:", "`1e300`", "float32"]),
    "nan target": ("a,b,y\n1,2,nan\n", [":2:", "column `y`", "not a finite"]),
    "empty target": ("a,b,y\n1,2,cat\n1,2, \n", [":3:", "target column `y` is empty"]),
    "duplicate column": ("a,a,y\n1,2,0\n", ["names column `a` twice"]),
    "unnamed column": ("a,,y\n1,2,0\n", ["column 2 of the header has no name"]),
    "one column": ("a;b;y\n1;2;0\n", ["names only one column"]),
    "target only": ("y,z\n1,2\n", []),
    "bad quoting": ('a,b,y\n1,"2"x,0\n', [":2:", "malformed CSV"]),
    "not utf-8": (b"a,b,y\n1,\xff\xfe,0\n", [":2:", "not UTF-8", "0xff"]),
}


@pytest.mark.parametrize("case", list(MALFORMED_CSV))
def test_malformed_csv_files_are_data_errors(tmp_path, case: str) -> None:
    content, fragments = MALFORMED_CSV[case]
    path = write(tmp_path, "bad.csv", content)
    if case == "target only":
        with pytest.raises(DataError, match="no feature columns besides the target `y`"):
            load_csv(path, features=[])
        return
    with pytest.raises(DataError) as caught:
        load_csv(path)
    message = caught.value.message
    assert str(caught.value) == message and message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_csv_hints_point_at_the_fix(tmp_path) -> None:
    path = write(tmp_path, "data.csv", "a,b,label\n1,2,0\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="lable")
    assert caught.value.hint == "did you mean `label`?"
    with pytest.raises(DataError) as caught:
        load_csv(tmp_path / "dta.csv")
    assert "no such file" in caught.value.message and "data.csv" in caught.value.hint
    with pytest.raises(DataError) as caught:
        load_csv(write(tmp_path, "semi.csv", "a;b;y\n1;2;0\n"))
    assert "delimiter=';'" in caught.value.hint
    with pytest.raises(DataError, match="no column named `c`"):
        load_csv(path, target="label", features=["a", "c"])
    with pytest.raises(DataError, match="is the target and cannot be a feature"):
        load_csv(path, target="label", features=["a", "label"])
    with pytest.raises(DataError, match="is a directory"):
        load_csv(tmp_path)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-1e6, 1e6, width=32), st.floats(-1e6, 1e6, width=32), st.integers(0, 5)
        ),
        min_size=1,
        max_size=20,
    )
)
def test_csv_round_trips_numeric_tables(tmp_path_factory, rows) -> None:
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text("p,q,y\n" + "".join(f"{p!r},{q!r},{y}\n" for p, q, y in rows))
    data = load_csv(path)
    np.testing.assert_array_equal(data.x, np.array([r[:2] for r in rows], dtype=np.float32))
    np.testing.assert_array_equal(data.y, [r[2] for r in rows])


# ---------------------------------------------------------------- NumPy files


def test_npz_with_and_without_a_validation_split(tmp_path) -> None:
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones((5, 3), dtype=np.float64), y=np.arange(5))
    data = load_npz(plain)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64 and data.x_val is None
    split = tmp_path / "split.npz"
    np.savez(
        split,
        x=np.zeros((4, 2)),
        y=np.array(["b", "a", "b", "a"]),
        x_val=np.zeros((2, 2)),
        y_val=np.array(["c", "a"]),
    )
    data = load_npz(split)
    assert data.class_names == ("a", "b", "c")
    assert data.y.tolist() == [1, 0, 1, 0] and data.y_val.tolist() == [2, 0]
    tokens = tmp_path / "tokens.npz"
    np.savez(tokens, x=np.arange(12, dtype=np.int32).reshape(3, 4), y=np.linspace(0, 1, 3))
    data = load_npz(tokens)
    assert data.x.dtype == np.int64 and data.y.dtype == np.float32


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


MALFORMED_NPZ = {
    "missing keys": (
        lambda p: _npz(p, X=np.ones((2, 2)), labels=np.ones(2)),
        ["no array named `x`", "`X`, `labels`"],
    ),
    "x_val without y_val": (
        lambda p: _npz(p, x=np.ones((2, 2)), y=np.ones(2), x_val=np.ones((1, 2))),
        ["has `x_val` but not `y_val`"],
    ),
    "length mismatch": (
        lambda p: _npz(p, x=np.ones((3, 2)), y=np.ones(2)),
        ["`x` has 3 samples but `y` has 2"],
    ),
    "val feature shape": (
        lambda p: _npz(p, x=np.ones((3, 2)), y=np.ones(3), x_val=np.ones((1, 5)), y_val=np.ones(1)),
        ["shape (5,)"],
    ),
    "object array": (
        lambda p: _npz(p, x=np.array([[1], "a"], dtype=object), y=np.ones(2)),
        ["array `x` holds Python objects"],
    ),
    "string features": (
        lambda p: _npz(p, x=np.array([["a"], ["b"]]), y=np.ones(2)),
        ["dtype <U1", "must be numbers"],
    ),
    "nan feature": (
        lambda p: _npz(p, x=np.array([[1.0, 2.0], [3.0, np.nan]]), y=np.ones(2)),
        ["`x` holds nan at index [1, 1]"],
    ),
    "inf target": (
        lambda p: _npz(p, x=np.ones((2, 1)), y=np.array([1.0, np.inf])),
        ["`y` holds inf at index [1]"],
    ),
    "scalar x": (lambda p: _npz(p, x=np.float64(3), y=np.ones(1)), ["`x` is a single number"]),
    "no samples": (lambda p: _npz(p, x=np.ones((0, 2)), y=np.ones(0)), ["`x` has no samples"]),
    "single array": (
        lambda p: np.save(p, np.ones(3)) or p.with_suffix(p.suffix + ".npy"),
        ["holds a single array"],
    ),
    "not numpy": (lambda p: p.write_bytes(b"x,y\n1,2\n") and p, ["not a NumPy .npy/.npz file"]),
    "empty file": (lambda p: p.write_bytes(b"") and p or p, ["the file is empty"]),
}


@pytest.mark.parametrize("case", list(MALFORMED_NPZ))
def test_malformed_npz_files_are_data_errors(tmp_path, case: str) -> None:
    make, fragments = MALFORMED_NPZ[case]
    path = make(tmp_path / "bad.npz")
    with pytest.raises(DataError) as caught:
        load_npz(path)
    message = caught.value.message
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_npz_hints_name_the_close_key_and_damage_is_reported(tmp_path) -> None:
    path = _npz(tmp_path / "a.npz", X=np.ones((2, 2)), y=np.ones(2))
    with pytest.raises(DataError) as caught:
        load_npz(path)
    assert caught.value.hint == "did you mean `X`?"
    good = _npz(tmp_path / "good.npz", x=np.ones((200, 20)), y=np.ones(200))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="not a NumPy|damaged"):
        load_npz(truncated)
    corrupt = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(corrupt, "w") as archive:
        archive.writestr("x.npy", b"not an npy payload")
        archive.writestr("y.npy", b"nor this")
    with pytest.raises(DataError, match="member `x` of the archive is not a NumPy array"):
        load_npz(corrupt)
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "missing.npz")


def test_npy_prediction_inputs(tmp_path) -> None:
    np.save(tmp_path / "in.npy", np.arange(6, dtype=np.float64).reshape(3, 2))
    inputs = load_npy(tmp_path / "in.npy")
    assert inputs.dtype == np.float32 and inputs.shape == (3, 2)
    np.save(tmp_path / "tok.npy", np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert load_npy(tmp_path / "tok.npy").dtype == np.int64
    np.savez(tmp_path / "both.npz", x=np.ones(2))
    with pytest.raises(DataError, match="is an .npz archive") as caught:
        load_npy(tmp_path / "both.npz")
    assert "np.save" in caught.value.hint
    np.save(tmp_path / "nan.npy", np.array([[1.0], [np.nan]]))
    with pytest.raises(DataError, match="the array holds nan at index"):
        load_npy(tmp_path / "nan.npy")
    np.save(tmp_path / "obj.npy", np.array([{}, []], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        load_npy(tmp_path / "obj.npy")
    with pytest.raises(DataError, match="no such file"):
        load_npy(tmp_path / "absent.npy")


# ---------------------------------------------------------------- user data as a Dataset


def test_user_data_becomes_a_dataset_of_the_right_task() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    labels = from_user_data(UserData(x=x, y=np.arange(10) % 3, class_names=("a", "b", "c", "d")))
    assert labels.task == "classification" and labels.num_classes == 4
    assert (len(labels.x_train), len(labels.x_val)) == (8, 2)
    values = from_user_data(UserData(x=x, y=np.linspace(0, 1, 10, dtype=np.float32)))
    assert values.task == "regression" and values.y_train.shape == (8, 1)
    as_regression = from_user_data(UserData(x=x, y=np.arange(10)), task="regression")
    assert as_regression.y_val.dtype == np.float32
    tokens = np.zeros((10, 4), dtype=np.int64)
    per_position = from_user_data(
        UserData(x=tokens, y=tokens, x_val=tokens[:3], y_val=tokens[:3] + 1)
    )
    assert per_position.task == "sequence_classification" and per_position.num_classes == 2
    assert len(per_position.x_train) == 10  # the file's own split is kept


@pytest.mark.parametrize(
    ("y", "task", "fragment"),
    [
        (np.arange(10) - 1, None, "class ids must be 0 or more"),
        (np.linspace(0, 1, 10, dtype=np.float32), "classification", "hold fractions"),
        (np.arange(10), "clasification", "unknown task"),
    ],
)
def test_user_targets_that_do_not_fit_the_task(y, task, fragment) -> None:
    with pytest.raises(DataError, match=fragment):
        from_user_data(UserData(x=np.ones((10, 1), dtype=np.float32), y=y), task=task)


# ---------------------------------------------------------------- splitting and batching


def test_train_val_split_partitions_deterministically() -> None:
    x, y = np.arange(50).reshape(25, 2), np.arange(25)
    x_train, y_train, x_val, y_val = train_val_split(x, y, 0.2, seed=7)
    assert (len(x_train), len(x_val)) == (20, 5)
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == list(range(25))
    np.testing.assert_array_equal(x_val[:, 0] // 2, y_val)  # rows stay paired
    np.testing.assert_array_equal(train_val_split(x, y, 0.2, seed=7)[3], y_val)
    assert not np.array_equal(train_val_split(x, y, 0.2, seed=8)[3], y_val)
    assert len(train_val_split(x, y, 3, seed=0)[2]) == 3


@pytest.mark.parametrize("val", [0.0, 1.0, 25, 0, True, "half"])
def test_train_val_split_rejects_impossible_splits(val) -> None:
    with pytest.raises(DataError):
        train_val_split(np.ones((25, 1)), np.ones(25), val, seed=0)


def test_minibatches_cover_each_sample_once_in_a_seeded_order() -> None:
    x, y = np.arange(22, dtype=np.float32).reshape(11, 2), np.arange(11)
    batches = list(iterate_minibatches(x, y, 4, np.random.default_rng(1)))
    assert [len(b) for b, _ in batches] == [4, 4, 3]
    seen = np.concatenate([by for _, by in batches])
    assert sorted(seen.tolist()) == list(range(11)) and seen.tolist() != list(range(11))
    for bx, by in batches:
        np.testing.assert_array_equal(bx[:, 0] // 2, by)
        assert bx.flags.c_contiguous
    again = [by for _, by in iterate_minibatches(x, y, 4, np.random.default_rng(1))]
    assert all(np.array_equal(a, b) for a, b in zip(again, (by for _, by in batches)))
    in_order = list(
        iterate_minibatches(x, y, 4, np.random.default_rng(1), shuffle=False, drop_last=True)
    )
    assert [len(b) for b, _ in in_order] == [4, 4]
    assert all(np.shares_memory(bx, x) for bx, _ in in_order)  # views, not copies
    with pytest.raises(ValueError):
        next(iterate_minibatches(x, y, 0, np.random.default_rng(0)))
