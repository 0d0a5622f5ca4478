"""``--dataset folder``: the ImageFolder layout read with Pillow, and its one-line errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from image_files import make_folder, write_images
from PIL import Image

from ensemble_kd.cli import main
from ensemble_kd.data import load_dataset


def test_grayscale_folder(tmp_path):
    s = load_dataset("folder", path=make_folder(tmp_path), val_fraction=0.25)
    assert s.class_names == ["cat", "dog", "owl"]
    assert s.input_shape == (1, 5, 6)
    assert len(s.y_train) + len(s.y_val) == 36 and len(s.y_val) == 9 and len(s.y_test) == 11
    assert 0.0 <= float(s.x_train.min()) and float(s.x_train.max()) <= 1.0
    img = np.asarray(Image.open(tmp_path / "test" / "cat" / "img_0.png"), np.float32) / 255
    np.testing.assert_allclose(s.x_test[0, 0].numpy(), img, rtol=1e-6)
    assert s.y_test.tolist() == [0] * 4 + [1] * 4 + [2] * 3


def test_val_folder_is_used_and_rgb_jpegs_resized(tmp_path):
    make_folder(tmp_path, val=True, mode="RGB", suffix=".jpg", size=(9, 7))
    s = load_dataset("folder", path=tmp_path, image_size=4)
    assert s.input_shape == (3, 4, 4) and len(s.y_train) == 36 and len(s.y_val) == 6


def test_mixed_modes_become_rgb(tmp_path):
    make_folder(tmp_path)
    write_images(tmp_path / "train", {"dog": 1}, mode="RGB", seed=5)  # overwrites dog/img_0
    s = load_dataset("folder", path=tmp_path)
    assert s.input_shape == (3, 5, 6)
    gray = np.asarray(Image.open(tmp_path / "test" / "cat" / "img_0.png"), np.float32) / 255
    for ch in range(3):  # a gray image repeats its channel
        np.testing.assert_allclose(s.x_test[0, ch].numpy(), gray, rtol=1e-6)


@pytest.mark.parametrize("case", ["not-image", "mixed-sizes", "empty-class", "unknown-test-class",
                                  "no-test", "stray-file"])
def test_bad_folders_one_line(tmp_path, capsys, case):
    root = make_folder(tmp_path / "d")
    if case == "not-image":
        bad = root / "train" / "dog" / "notes.png"
        bad.write_text("not an image")
        pattern = "notes.png: not an image"
    elif case == "mixed-sizes":
        write_images(root / "test", {"owl": 1}, size=(8, 8), seed=3)
        pattern = "img_0.png: 8x8 pixels but .* is 6x5; pass --image-size"
    elif case == "empty-class":
        (root / "train" / "emu").mkdir()
        pattern = "emu: empty class folder"
    elif case == "unknown-test-class":
        write_images(root / "test", {"yak": 1})
        pattern = "yak: class 'yak' is not one of the training classes"
    elif case == "no-test":
        for p in (root / "test").rglob("*.png"):
            p.unlink()
        for p in sorted((root / "test").iterdir()):
            p.rmdir()
        (root / "test").rmdir()
        pattern = "test: no such folder"
    else:
        (root / "train" / "readme.txt").write_text("hi")
        pattern = "readme.txt: a file where class folders are expected"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc = main(["train-ensemble", "--dataset", "folder", "--data-path", str(root), "--out",
               str(tmp_path / "out"), "--teachers", "1", "--teacher-epochs", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert re.search(pattern, err[0]), err[0]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_run_on_an_image_folder_end_to_end(tmp_path, capsys):
    root = make_folder(tmp_path / "d", mode="RGB", size=(8, 8))
    out = tmp_path / "run"
    argv = ["run", "--dataset", "folder", "--data-path", str(root), "--out", str(out),
            "--teachers", "2", "--teacher-epochs", "2", "--epochs", "2", "--teacher-widths", "4", "8",
            "--student-widths", "8", "--batch-size", "8", "--val-fraction", "0.25",
            "--specialist-epochs", "1", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    assert main(["evaluate", "--run", str(out), "--quiet"]) == 0
    assert (out / "evaluate.json").is_file()
    assert "distilled student" in capsys.readouterr().out
