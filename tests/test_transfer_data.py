"""``--transfer-data``: an external (possibly unlabelled) transfer set, .npz or image folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from image_files import make_folder, write_images

from ensemble_kd.cli import main
from ensemble_kd.data import load_dataset
from ensemble_kd.transfer_data import load_transfer_data

DATA = ["--dataset", "digits", "--device", "cpu"]
TRAIN = ["--epochs", "1", "--batch-size", "64"]
STUDENT = ["--student-arch", "mlp", "--student-widths", "8", *TRAIN]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tdata") / "ens"
    assert main(["train-ensemble", "--out", str(out), *DATA, "--teachers", "1", "--teacher-arch",
                 "mlp", "--teacher-widths", "16", "--teacher-jitter", "0", "--teacher-epochs", "1",
                 *TRAIN, "--quiet"]) == 0
    return out


def _npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_unlabelled_npz_student_learns_on_it_baseline_on_the_training_split(teachers, tmp_path,
                                                                              capsys):
    x = np.random.default_rng(0).random((100, 1, 8, 8), dtype=np.float32)
    out = tmp_path / "d"
    assert main(["distill", "--teachers", str(teachers), "--out", str(out), *DATA, *STUDENT,
                 "--transfer-data", str(_npz(tmp_path / "u.npz", X=x))]) == 0
    err = capsys.readouterr().err
    assert "transfer set: 100 examples from" in err and ", unlabelled" in err
    assert "hard labels of the training split" in err
    names = [r["model"] for r in json.loads((out / "summary.json").read_text())["rows"]]
    assert "baseline student (hard labels)" in names and "distilled student" in names
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["transfer_data"] == str(tmp_path / "u.npz")


def test_labelled_npz_and_unlabelled_flag(digits, tmp_path):
    x, y = digits.x_test[:30].numpy(), digits.y_test[:30].numpy()
    path = _npz(tmp_path / "l.npz", X=x, y=y)
    t = load_transfer_data(path, digits)
    assert t.x.shape == (30, 1, 8, 8) and t.y.tolist() == y.tolist()
    assert load_transfer_data(path, digits, labelled=False).y is None


def test_image_folders_labelled_and_unlabelled(tmp_path):
    splits = load_dataset("folder", path=make_folder(tmp_path / "d"))
    write_images(tmp_path / "t", {"owl": 2, "cat": 3}, mode="RGB", size=(10, 10))
    t = load_transfer_data(tmp_path / "t", splits)
    assert t.x.shape == (5, 1, 5, 6)  # converted to gray and resized to the training images
    assert sorted(t.y.tolist()) == [0, 0, 0, 2, 2]
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "t" / "cat").iterdir():
        p.rename(flat / p.name)
    t = load_transfer_data(flat, splits)
    assert t.y is None and len(t) == 3


@pytest.mark.parametrize("case", ["wrong-shape", "labels-out-of-range", "no-X", "missing",
                                  "with-omit", "not-npz", "unknown-class"])
def test_bad_transfer_data_one_line(teachers, tmp_path, capsys, case):
    x = np.zeros((10, 1, 8, 8), np.float32)
    extra: list[str] = []
    if case == "wrong-shape":
        path, pattern = _npz(tmp_path / "a.npz", X=np.zeros((10, 64))), r"X inputs have shape \(64,\)"
    elif case == "labels-out-of-range":
        path = _npz(tmp_path / "a.npz", X=x, y=np.full(10, 12))
        pattern = r"y holds labels in \[12, 12\] but there are 10 classes"
    elif case == "no-X":
        path, pattern = _npz(tmp_path / "a.npz", X_train=x), "missing key X"
    elif case == "missing":
        path, pattern = tmp_path / "none.npz", "none.npz: no such file or folder"
    elif case == "with-omit":
        path, pattern = _npz(tmp_path / "a.npz", X=x), "--omit-classes choose"
        extra = ["--omit-classes", "1"]
    elif case == "not-npz":
        path = tmp_path / "a.npz"
        path.write_text("hello")
        pattern = "a.npz: cannot read as an .npz archive without pickle"
    else:
        path = tmp_path / "imgs"
        write_images(path, {"yak": 1})
        pattern = "yak: class 'yak' is not one of the training classes"
    rc = main(["distill", "--teachers", str(teachers), "--out", str(tmp_path / "out"), *DATA,
               *STUDENT, "--transfer-data", str(path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert re.search(pattern, err[0]), err[0]
    assert not (tmp_path / "out").exists()
