"""Data sets, seeded splits, IDX files, .npz files and transfer sets."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from ensemble_kd.data import (
    FASHION_MNIST_CLASSES,
    Splits,
    TransferSet,
    load_dataset,
    make_transfer_set,
    read_idx,
    stratified_split,
    write_idx,
)

FASHION_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _all_parts(s: Splits):
    return [(s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)]


def _small_splits(y_train, n_classes):
    y = torch.tensor(y_train)
    return Splits(
        "tiny", torch.arange(len(y), dtype=torch.float32)[:, None], y,
        torch.zeros(0, 1), torch.zeros(0, dtype=torch.long),
        torch.zeros(1, 1), torch.zeros(1, dtype=torch.long),
        [str(i) for i in range(n_classes)],
    )  # fmt: skip


# ---------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_fixed_test_split():
    a = load_dataset("digits")
    assert a.input_shape == (1, 8, 8) and a.n_classes == 10
    assert a.class_names == [str(i) for i in range(10)]
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (1213, 135, 449)  # 1797 total
    for x, y in _all_parts(a):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert set(y.tolist()) == set(range(10))  # stratified: every digit in every split
    b = load_dataset("digits", seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_val, b.y_val)  # the seed moves only the validation split
    assert a.describe() == (
        "digits: 1213 train / 135 val / 449 test, 10 classes, input shape (1, 8, 8)"
    )


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_groups_and_balance():
    s = load_dataset("synthetic")
    assert s.input_shape == (32,) and s.n_classes == 30
    assert s.class_names[:2] == ["c00", "c01"] and s.class_names[-1] == "c29"
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (5400, 600, 3000)
    assert sorted(c for g in s.groups for c in g) == list(range(30))
    assert all(len(g) == 5 and g == sorted(g) for g in s.groups)
    assert torch.bincount(s.y_test).tolist() == [100] * 30
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert torch.isfinite(s.x_train).all()


def test_synthetic_confusions_fall_within_planted_groups():
    # Nearest class mean (close to Bayes-optimal here) stands in for a small model.
    s = load_dataset("synthetic")
    means = torch.stack([s.x_train[s.y_train == c].mean(0) for c in range(30)])  # (C, D)
    pred = torch.cdist(s.x_test, means).argmin(1)
    group_of = torch.empty(30, dtype=torch.long)
    for g, members in enumerate(s.groups):
        group_of[members] = g
    wrong = pred != s.y_test
    assert 0.75 < 1 - wrong.float().mean() < 0.92
    within = (group_of[pred[wrong]] == group_of[s.y_test[wrong]]).float().mean()
    assert within > 0.95


def test_synthetic_options_and_errors():
    s = load_dataset("synthetic", n_classes=10, n_groups=3, dim=4, n_train=100, n_test=20)
    assert sorted(len(g) for g in s.groups) == [3, 3, 4]
    assert s.input_shape == (4,) and len(s.y_train) + len(s.y_val) == 100
    t = load_dataset("synthetic", n_classes=10, n_groups=3, dim=4, n_train=100, n_test=20)
    assert s.fingerprint() == t.fingerprint()  # same data seed, same data
    u = load_dataset("synthetic", n_classes=10, n_groups=3, dim=4, n_train=100, n_test=20,
                     synthetic_seed=1)  # fmt: skip
    assert s.fingerprint() != u.fingerprint()
    with pytest.raises(ValueError, match="unknown option.*colour.*valid: n_classes"):
        load_dataset("synthetic", colour=3)
    with pytest.raises(ValueError, match="n_groups must be in"):
        load_dataset("synthetic", n_classes=4, n_groups=5)


# ---------------------------------------------------------------- fashion-mnist


def _write_fashion(folder, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in FASHION_NAMES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_small_idx_files(tmp_path, gz):
    arrays = _write_fashion(tmp_path, gz=gz)
    s = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert s.class_names == FASHION_MNIST_CLASSES and s.class_names[9] == "Ankle boot"
    assert s.input_shape == (1, 28, 28)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (18, 2, 10)
    assert s.x_test.dtype == torch.float32 and s.y_test.dtype == torch.int64
    expected = torch.from_numpy(arrays["x_test"]).float()[:, None] / 255.0
    assert torch.allclose(s.x_test, expected)
    assert s.y_test.tolist() == arrays["y_test"].tolist()
    assert 0.0 <= float(s.x_train.min()) and float(s.x_train.max()) <= 1.0


def test_fashion_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(e.value)
    for stem in FASHION_NAMES.values():
        assert stem + ".gz" in msg
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg
    _write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing from .*: t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, arr)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    assert np.array_equal(back, arr) and back.flags.writeable


def test_idx_header_bytes_are_the_mnist_magic(tmp_path):
    write_idx(tmp_path / "labels", np.array([1, 2, 3], dtype=np.uint8))
    assert (tmp_path / "labels").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])
    write_idx(tmp_path / "images", np.zeros((2, 2, 2), dtype=np.uint8))
    assert (tmp_path / "images").read_bytes()[:4] == bytes.fromhex("00000803")


def test_idx_wrong_magic_truncated_and_trailing_bytes(tmp_path):
    bad = tmp_path / "bad-magic"
    bad.write_bytes(bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(ValueError, match=r"bad-magic: not an IDX file: wrong magic number"):
        read_idx(bad)
    good = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(6)
    cut = tmp_path / "cut"
    cut.write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"cut: truncated IDX file: .* needs 6 bytes .* found 5"):
        read_idx(cut)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(ValueError, match="cut.gz: truncated IDX file"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "half.gz").write_bytes(gzip.compress(good)[:-6])  # broken gzip stream
    with pytest.raises(ValueError, match="half.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "half.gz")
    (tmp_path / "long").write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="long: 1 unexpected bytes"):
        read_idx(tmp_path / "long")
    (tmp_path / "header").write_bytes(good[:6])
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(tmp_path / "header")


# ---------------------------------------------------------------- npz


def _npz_arrays():
    rng = np.random.default_rng(0)
    return {
        "X_train": rng.normal(size=(40, 3, 2)),
        "y_train": np.arange(40) % 4,
        "X_test": rng.normal(size=(8, 3, 2)),
        "y_test": np.arange(8) % 4,
    }


def test_npz_round_trip(tmp_path):
    arrays = _npz_arrays()
    np.savez(tmp_path / "d.npz", **arrays, class_names=np.array(["a", "b", "c", "d"]))
    s = load_dataset("npz", path=tmp_path / "d.npz", val_fraction=0.25)
    assert s.name == "npz" and s.class_names == ["a", "b", "c", "d"]
    assert s.input_shape == (3, 2) and s.x_train.dtype == torch.float32
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (30, 10, 8)
    # quotas 2.5 per class: largest remainder, ties to the lower class index
    assert torch.bincount(s.y_val).tolist() == [3, 3, 2, 2]
    assert torch.allclose(s.x_test, torch.from_numpy(arrays["X_test"]).float())
    # The validation and training parts are exactly the original training rows.
    both = torch.cat([s.x_train, s.x_val]).reshape(40, -1)
    orig = torch.from_numpy(arrays["X_train"]).float().reshape(40, -1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, orig.tolist()))
    np.savez(tmp_path / "plain.npz", **arrays)
    assert load_dataset("npz", path=tmp_path / "plain.npz").class_names == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: [a.pop("y_test"), a.pop("X_test")], "missing key.*X_test, y_test"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "X_train has shape .* 39 labels"),
        (lambda a: a.update(y_train=a["y_train"] + 0.5), "y_train holds non-integer labels"),
        (lambda a: a.update(y_test=np.array(["x"] * 8)), "y_test must hold integer labels"),
        (lambda a: a.update(y_test=a["y_test"] - 1), "y_test holds negative label -1"),
        (lambda a: a["X_train"].__setitem__((0, 0, 0), np.nan), "X_train holds non-finite"),
        (lambda a: a.update(X_test=a["X_test"][:0], y_test=a["y_test"][:0]), "is empty"),
        (lambda a: a.update(X_test=a["X_test"][:, :2]), "X_test inputs have"),
        (lambda a: a.update(class_names=np.array(["a", "b"])), "2 class_names but labels go"),
    ],
)
def test_npz_errors(tmp_path, change, message):
    arrays = _npz_arrays()
    change(arrays)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset("npz", path=tmp_path / "d.npz")


def test_npz_refuses_pickles_and_non_npz(tmp_path):
    arrays = _npz_arrays()
    arrays["y_test"] = np.array([0, 1, 2, 3, 0, 1, 2, {}], dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(ValueError, match="without pickle"):
        load_dataset("npz", path=tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz: cannot read"):
        load_dataset("npz", path=tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="needs path="):
        load_dataset("npz")
    with pytest.raises(FileNotFoundError):
        load_dataset("npz", path=tmp_path / "absent.npz")


def _write_npz_like(path, kind):
    arrays = _npz_arrays()
    if kind == "pickle":
        path.write_bytes(pickle.dumps(arrays))
    elif kind == "text":
        path.write_text("X_train,y_train\n1,2\n")
    elif kind == "truncated":
        np.savez(path, **arrays)
        path.write_bytes(path.read_bytes()[:200])
    else:  # an object array inside a real archive
        np.savez(path, **{**arrays, "X_test": np.array([{}] * 8, dtype=object)})


@pytest.mark.parametrize("kind", ["pickle", "text", "truncated", "object-array"])
def test_npz_errors_never_advise_unpickling(tmp_path, kind):
    """numpy's own message for these advises loading "unsafely" with allow_pickle: not ours."""
    path = tmp_path / "d.npz"
    _write_npz_like(path, kind)
    with pytest.raises(ValueError, match="without pickle") as err:
        load_dataset("npz", path=path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert not any(w in text for w in ("allow_pickle", "unsafe", "trust", "pickle.load"))


# ---------------------------------------------------------------- names, splits


def test_load_dataset_argument_errors():
    with pytest.raises(ValueError, match="unknown data set 'cifar'.*digits, fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="takes no options"):
        load_dataset("digits", n_classes=3)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="val_fraction must be in"):
            load_dataset("digits", val_fraction=bad)


def test_seeded_split_reproducible_disjoint_and_stratified():
    y = np.repeat(np.arange(3), [50, 30, 20])
    keep_a, held_a = stratified_split(y, 0.1, seed=4)
    keep_b, held_b = stratified_split(y, 0.1, seed=4)
    assert np.array_equal(keep_a, keep_b) and np.array_equal(held_a, held_b)
    assert not np.array_equal(held_a, stratified_split(y, 0.1, seed=5)[1])
    assert np.intersect1d(keep_a, held_a).size == 0
    assert np.array_equal(np.sort(np.concatenate([keep_a, held_a])), np.arange(100))
    assert np.bincount(y[held_a]).tolist() == [5, 3, 2]
    # A singleton class stays in the kept part.
    keep, held = stratified_split(np.array([0, 0, 0, 0, 1]), 0.5, seed=0)
    assert 4 in keep and len(held) == 2


def test_splits_same_seed_identical_and_disjoint_rows():
    a = load_dataset("synthetic", seed=3)
    b = load_dataset("synthetic", seed=3)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert a.fingerprint() == b.fingerprint()
    train_rows = {tuple(r) for r in a.x_train[:, :4].tolist()}
    assert not any(tuple(r) in train_rows for r in a.x_val[:, :4].tolist())
    assert torch.bincount(a.y_val).tolist() == [20] * 30


def test_splits_validates_shapes():
    with pytest.raises(ValueError, match="x_val has 2 rows but y_val has shape"):
        Splits("bad", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long),
               torch.zeros(2, 2), torch.zeros(1, dtype=torch.long),
               torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), ["a"])  # fmt: skip
    with pytest.raises(
        ValueError, match=r"y_test holds labels in \[5, 5\] but there are only 2 class names"
    ):
        Splits("bad", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long),
               torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
               torch.zeros(1, 2), torch.tensor([5]), ["a", "b"])  # fmt: skip


def test_fingerprint_changes_when_one_value_changes():
    s = load_dataset("digits")
    fp = s.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    x_test = s.x_test.clone()
    x_test[7, 0, 3, 3] += 1 / 16
    changed = Splits(s.name, s.x_train, s.y_train, s.x_val, s.y_val, x_test, s.y_test,
                     s.class_names)  # fmt: skip
    assert changed.fingerprint() != fp
    renamed = Splits(s.name, s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test,
                     [*s.class_names[:9], "nine"])  # fmt: skip
    assert renamed.fingerprint() != fp
    same = Splits(s.name, s.x_train.clone(), s.y_train, s.x_val, s.y_val, s.x_test, s.y_test,
                  list(s.class_names))  # fmt: skip
    assert same.fingerprint() == fp


# ---------------------------------------------------------------- transfer sets


def test_transfer_set_all_fraction_omit_and_unlabelled():
    s = load_dataset("synthetic")
    full = make_transfer_set(s)
    assert isinstance(full, TransferSet) and len(full) == 5400
    assert torch.equal(full.indices, torch.arange(5400)) and torch.equal(full.y, s.y_train)

    small = make_transfer_set(s, fraction=0.03, seed=1)
    assert len(small) == 162  # round(0.03 * 5400)
    assert set(small.y.tolist()) == set(range(30))
    assert torch.equal(small.x, s.x_train[small.indices])
    assert torch.equal(small.indices, small.indices.sort().values)
    again = make_transfer_set(s, fraction=0.03, seed=1)
    assert torch.equal(small.indices, again.indices)
    assert not torch.equal(small.indices, make_transfer_set(s, fraction=0.03, seed=2).indices)

    omit = make_transfer_set(s, omit_classes=[3, 7])
    assert not set(omit.y.tolist()) & {3, 7}
    assert len(omit) == int(((s.y_train != 3) & (s.y_train != 7)).sum())

    bare = make_transfer_set(s, fraction=0.5, omit_classes=[0], labelled=False)
    assert bare.y is None and bare.indices.dtype == torch.int64
    assert not (s.y_train[bare.indices] == 0).any()


def test_transfer_set_keeps_every_class_at_tiny_fraction():
    s = _small_splits([0] * 50 + [1] * 3 + [2] * 3, n_classes=3)
    ts = make_transfer_set(s, fraction=0.05, seed=0)
    assert torch.bincount(ts.y).tolist() == [3, 1, 1]  # 3 by quota, 1 each by the floor


def test_transfer_set_errors():
    s = _small_splits([0, 0, 1, 1], n_classes=3)
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="fraction must be in"):
            make_transfer_set(s, fraction=bad)
    with pytest.raises(ValueError, match="contains class 3 but there are only 3 classes"):
        make_transfer_set(s, omit_classes=[3])
    with pytest.raises(ValueError, match="contains class -1"):
        make_transfer_set(s, omit_classes=[-1])
    with pytest.raises(ValueError, match="omits every class"):
        make_transfer_set(s, omit_classes=[0, 1, 2])
    with pytest.raises(ValueError, match="transfer set is empty"):
        make_transfer_set(s, omit_classes=[0, 1])  # class 2 has no training example
