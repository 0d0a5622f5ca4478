"""A catalogue of bad inputs: each must end in a clear error that names the problem, and none may
change a file that already exists.

Python API: a ``ValueError`` (or its subclass ``FormatError``) whose message names the problem.
Command line: exit code 2, exactly one line on stderr naming the problem, no traceback, and nothing
written (a failing command must not even create its output folder, so that the user can simply run
it again with the mistake fixed). Most commands run in-process through ``ensemble_kd.cli.main``; a
few go through a real ``python -m ensemble_kd`` process.

Every test runs against ``world``: a folder with a trained run, data files, configs and damaged
copies of checkpoints, built once. An autouse fixture snapshots its bytes and mtimes before each
test and checks them after: no bad input may change, add or remove a file there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import byo_modules as bm
import numpy as np
import pytest
import torch
from image_files import write_images

from ensemble_kd.batching import TensorBatches
from ensemble_kd.cache import ensure_cache, open_cache, write_cache
from ensemble_kd.checkpoint import load_checkpoint, load_model, save_model
from ensemble_kd.cli import main
from ensemble_kd.cli.config import GROUPS, read_config_file
from ensemble_kd.data import Splits, load_dataset, make_transfer_set, read_idx, write_idx
from ensemble_kd.distill import DistillConfig, distill
from ensemble_kd.ensemble import ModelSpec, data_meta, load_teachers, train_ensemble
from ensemble_kd.factories import build_any
from ensemble_kd.io import FormatError, atomic_write_json, atomic_write_text, load_tensors, save_tensors
from ensemble_kd.losses import distillation_loss
from ensemble_kd.models import build_model
from ensemble_kd.train import TrainConfig, train
from specialists.clustering import cluster_classes
from specialists.confusion import save_predictions
from specialists.subsets import validate_subsets

REPO = Path(__file__).resolve().parents[1]

DIGITS = ["--dataset", "digits", "--device", "cpu"]
TRAIN = ["--epochs", "1", "--batch-size", "64"]
TEACHERS = ["--teachers", "1", "--teacher-arch", "mlp", "--teacher-widths", "16",
            "--teacher-dropout", "0", "--teacher-jitter", "0", "--teacher-epochs", "1", *TRAIN]
STUDENT = ["--student-arch", "mlp", "--student-widths", "8", *TRAIN]


# ---------------------------------------------------------------- the world and its snapshot


def _tiny_model(n_classes: int = 10, widths=(16,), seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (1, 8, 8), n_classes, widths=list(widths))


def _fashion_files(folder: Path, *, bad_magic: bool) -> None:
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28), np.uint8))
    labels = np.arange(10, dtype=np.uint8)
    if bad_magic:  # the labels of a 1-D file with its first magic byte damaged
        raw = bytes([8, 8, 8, 1]) + np.asarray([10], ">u4").tobytes() + labels.tobytes()
        (folder / "t10k-labels-idx1-ubyte").write_bytes(raw)
    else:
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "run": root / "run"}
    assert main(["train-ensemble", "--out", str(w["run"]), *DIGITS, *TEACHERS, "--quiet"]) == 0
    teacher = w["run"] / "teachers" / "teacher_0" / "model.pt"
    w["teacher"], w["checkpoint"] = teacher, teacher.with_name("checkpoint.pt")
    raw = teacher.read_bytes()

    # teachers that do not belong together: 10 and 3 classes
    w["mixed"] = root / "mixed"
    (w["mixed"] / "teacher_0").mkdir(parents=True)
    shutil.copy(teacher, w["mixed"] / "teacher_0" / "model.pt")
    save_model(w["mixed"] / "teacher_1" / "model.pt", _tiny_model(3), {"n_classes": 3})

    # damaged and foreign model files
    w["truncated"] = root / "truncated.pt"
    w["truncated"].write_bytes(raw[: len(raw) // 2])
    w["garbage"] = root / "garbage.pt"
    w["garbage"].write_bytes(np.random.default_rng(0).bytes(len(raw)))
    obj = load_tensors(teacher)  # widths [16] weights under a spec that says [32]
    spec = json.loads(obj["spec"])
    spec["kwargs"]["widths"] = [32]
    save_tensors(root / "wrong_arch.pt", {**obj, "spec": json.dumps(spec)})
    w["wrong_arch"] = root / "wrong_arch.pt"

    # a run whose student file is truncated
    w["run_trunc"] = root / "run_trunc"
    shutil.copytree(w["run"], w["run_trunc"])
    (w["run_trunc"] / "student").mkdir()
    (w["run_trunc"] / "student" / "model.pt").write_bytes(raw[:1000])

    # configs, subsets, data files
    cfg = root / "configs"
    cfg.mkdir()
    atomic_write_text(cfg / "unknown.toml", "tempreature = 3.0\n")
    atomic_write_text(cfg / "wrong_type.toml", 'teachers = "five"\n')
    atomic_write_text(cfg / "not_toml.toml", "this is = = not toml\n")
    for name, subsets in {"dup": [[1, 1, 2]], "range": [[3, 12]], "small": [[4]],
                          "not_lists": {"subsets": 3}}.items():
        atomic_write_json(root / f"subsets_{name}.json", subsets)
    x = np.zeros((10, 4), np.float32)
    y = np.arange(10) % 3
    with open(root / "missing_keys.npz", "wb") as f:
        np.savez(f, X_train=x, y_train=y, X_test=x)
    with open(root / "mismatch.npz", "wb") as f:
        np.savez(f, X_train=x, y_train=y[:9], X_test=x, y_test=y)
    with open(root / "nan.npz", "wb") as f:
        np.savez(f, X_train=np.where(np.eye(10, 4) > 0, np.nan, x), y_train=y, X_test=x, y_test=y)
    (root / "fashion_empty").mkdir()
    (root / "fashion_bad").mkdir()
    _fashion_files(root / "fashion_bad", bad_magic=True)
    probs = np.full((5, 3), 1 / 3, np.float32)
    with open(root / "preds_mismatch.npz", "wb") as f:
        np.savez(f, probs=probs, labels=np.zeros(4, np.int64))
    # image folders: one good, and one for each mistake
    write_images(root / "images" / "train", {"a": 3, "b": 3, "c": 3})
    write_images(root / "images" / "test", {"a": 1, "b": 1})
    for name in ("img_not_image", "img_sizes", "img_empty", "img_unknown"):
        shutil.copytree(root / "images", root / name)
    (root / "img_not_image" / "train" / "b" / "notes.png").write_text("not an image")
    write_images(root / "img_sizes" / "test", {"c": 1}, size=(9, 9))
    (root / "img_empty" / "train" / "d").mkdir()
    write_images(root / "img_unknown" / "test", {"z": 1})
    with open(root / "transfer_shape.npz", "wb") as f:
        np.savez(f, X=np.zeros((5, 64), np.float32))
    with open(root / "transfer_labels.npz", "wb") as f:
        np.savez(f, X=np.zeros((5, 1, 8, 8), np.float32), y=np.full(5, 10))
    w.update({k: root / k for k in ("images", "img_not_image", "img_sizes", "img_empty",
                                    "img_unknown")})
    w.update({k: root / f"{k}.npz" for k in ("missing_keys", "mismatch", "nan", "preds_mismatch",
                                             "transfer_shape", "transfer_labels")})
    w.update({f"subsets_{k}": root / f"subsets_{k}.json" for k in
              ("dup", "range", "small", "not_lists")})
    w.update({"configs": cfg, "new": root / "new-out", "fashion_empty": root / "fashion_empty",
              "fashion_bad": root / "fashion_bad"})
    return w


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(autouse=True)
def nothing_changes(world):
    before = _snapshot(world["root"])
    yield
    after = _snapshot(world["root"])
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not (added or removed or changed), f"added {added}, removed {removed}, changed {changed}"


# ---------------------------------------------------------------- command line, in-process


def _cli_error(capsys, argv: list[str], pattern: str) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("ensemble-kd: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _distill(w, *extra):
    return ["distill", "--teachers", w["run"], "--out", w["new"], *DIGITS, *STUDENT, *extra]


def _specialists(w, *extra):
    return ["train-specialists", "--generalist", w["teacher"], "--out", w["new"], *DIGITS, *TRAIN,
            *extra]


def _ensemble(w, *extra):
    return ["train-ensemble", "--out", w["new"], *DIGITS, *TEACHERS, *extra]


CLI_CASES = {
    # output folders
    "run-already-there": (lambda w: ["train-ensemble", "--out", w["run"], *DIGITS, *TEACHERS],
                          r"already holds a run; pass --resume to continue it or --overwrite"),
    "resume-other-settings": (
        lambda w: ["train-ensemble", "--out", w["run"], "--resume", *DIGITS, *TEACHERS,
                   "--teacher-widths", "32"], r"other settings \(teacher_widths\)"),
    "out-not-empty": (lambda w: ["train-ensemble", "--out", w["configs"], *DIGITS, *TEACHERS],
                      r"exists and is not empty"),
    # teachers and students that do not fit
    "teachers-class-counts": (lambda w: [*_distill(w), "--teachers", w["mixed"]],
                              r"different numbers of classes: \[3, 10\]"),
    "teachers-other-split": (lambda w: _distill(w, "--data-seed", "1"),
                             r"teacher was trained on other data"),
    "teachers-other-data-set": (
        lambda w: _distill(w, "--dataset", "synthetic", "--synthetic-classes", "10"),
        r"trained on other data \('digits'.*\('synthetic'\)"),
    "teachers-missing": (lambda w: [*_distill(w), "--teachers", w["root"] / "nowhere"],
                         r"no trained teachers"),
    "generalist-other-data": (lambda w: _specialists(w, "--data-seed", "2"),
                              r"model was trained on other data"),
    "specialist-calibration-unknown": (
        lambda w: _specialists(w, "--specialist-calibration", "vectors"),
        r"specialist_calibration must be one of auto, vector, got 'vectors'"),
    # distillation settings
    "temperature-zero": (lambda w: _distill(w, "--temperature", "0"),
                         r"temperature must be finite and > 0, got 0"),
    "temperature-inf": (lambda w: _distill(w, "--temperature", "inf"),
                        r"temperature must be finite and > 0, got inf"),
    "alpha-above-one": (lambda w: _distill(w, "--alpha", "1.5"), r"alpha must lie in \[0, 1\]"),
    "alpha-nan": (lambda w: _distill(w, "--alpha", "nan"), r"alpha must lie in \[0, 1\]"),
    "teacher-weights-negative": (lambda w: _distill(w, "--teacher-weights", "-1"),
                                 r"teacher_weights must be finite and non-negative"),
    "teacher-weights-zero": (lambda w: _distill(w, "--teacher-weights", "0"),
                             r"teacher_weights must not all be zero"),
    "teacher-weights-count": (lambda w: _distill(w, "--teacher-weights", "1", "1"),
                              r"teacher_weights has 2 entries but there are 1 teachers"),
    "cache-topk": (lambda w: _distill(w, "--cache-topk", "10"), r"cache_topk must lie in \[0, 9\]"),
    "jitter-needs-online": (lambda w: _distill(w, "--student-jitter", "1"),
                            r"online teachers .*--online"),
    # transfer sets
    "fraction-zero": (lambda w: _distill(w, "--transfer-fraction", "0"),
                      r"fraction must be in \(0, 1\], got 0"),
    "fraction-above-one": (lambda w: _distill(w, "--transfer-fraction", "1.5"),
                           r"fraction must be in \(0, 1\], got 1.5"),
    "omit-every-class": (lambda w: _distill(w, "--omit-classes", *map(str, range(10))),
                         r"omits every class"),
    "omit-unknown-class": (lambda w: _distill(w, "--omit-classes", "12"),
                           r"omit_classes contains class 12 but there are only 10 classes"),
    # specialists
    "subsets-duplicate": (lambda w: _specialists(w, "--subsets", w["subsets_dup"]),
                          r"subsets\[0\] contains class 1 more than once"),
    "subsets-out-of-range": (lambda w: _specialists(w, "--subsets", w["subsets_range"]),
                             r"subsets\[0\] contains class 12 but there are only 10 classes"),
    "subsets-one-class": (lambda w: _specialists(w, "--subsets", w["subsets_small"]),
                          r"subsets\[0\] has 1 class\(es\); a specialist subset needs at least 2"),
    "subsets-not-lists": (lambda w: _specialists(w, "--subsets", w["subsets_not_lists"]),
                          r"expected a JSON list of class lists"),
    "subsets-file-missing": (lambda w: _specialists(w, "--subsets", w["root"] / "none.json"),
                             r"subsets file .*none.json does not exist"),
    "n-clusters-too-many": (lambda w: _specialists(w, "--n-clusters", "11"),
                            r"n_clusters must lie in \[1, 10\] for 10 classes, got 11"),
    "n-clusters-zero-before-training": (
        lambda w: ["run", "--out", w["new"], *DIGITS, *TEACHERS, *STUDENT, "--n-clusters", "0"],
        r"n_clusters must lie in \[1, 10\]"),
    "specialist-share": (lambda w: _specialists(w, "--specialist-share", "1"),
                         r"share must lie strictly between 0 and 1"),
    "n-clusters-report": (
        lambda w: ["confusion-report", "--model", w["teacher"], "--out", w["new"], *DIGITS,
                   "--n-clusters", "0"], r"n_clusters must be an int in \[1, 10\]"),
    # damaged or foreign model files
    "truncated-model": (
        lambda w: ["confusion-report", "--model", w["truncated"], "--out", w["new"], *DIGITS],
        r"truncated\.pt: cannot be loaded safely \(truncated, corrupt"),
    "corrupt-model": (
        lambda w: ["confusion-report", "--model", w["garbage"], "--out", w["new"], *DIGITS],
        r"garbage\.pt: cannot be loaded safely"),
    "other-architecture": (
        lambda w: ["confusion-report", "--model", w["wrong_arch"], "--out", w["new"], *DIGITS],
        r"wrong_arch\.pt: weights do not match the architecture"),
    "checkpoint-as-model": (lambda w: [*_specialists(w), "--generalist", w["checkpoint"]],
                            r"checkpoint\.pt: not an ensemble-kd model file"),
    "evaluate-truncated-student": (lambda w: ["evaluate", "--run", w["run_trunc"], *DIGITS],
                                   r"student/model\.pt: cannot be loaded safely"),
    "evaluate-no-run": (lambda w: ["evaluate", "--run", w["root"] / "nowhere", *DIGITS],
                        r"nowhere: no such run folder"),
    "predictions-mismatch": (
        lambda w: ["confusion-report", "--predictions", w["preds_mismatch"], "--out", w["new"]],
        r"probs has 5 rows but labels has 4"),
    # data files
    "npz-missing-keys": (lambda w: _ensemble(w, "--dataset", "npz", "--data-path", w["missing_keys"]),
                         r"missing key\(s\) y_test"),
    "npz-mismatched-lengths": (
        lambda w: _ensemble(w, "--dataset", "npz", "--data-path", w["mismatch"]),
        r"X_train has shape \(10, 4\) but y_train has 9 labels"),
    "npz-non-finite-inputs": (lambda w: _ensemble(w, "--dataset", "npz", "--data-path", w["nan"]),
                              r"X_train holds non-finite values"),
    "npz-without-path": (lambda w: _ensemble(w, "--dataset", "npz"), r"needs path="),
    "fashion-mnist-missing": (
        lambda w: _ensemble(w, "--dataset", "fashion-mnist", "--data-dir", w["fashion_empty"]),
        r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion-mnist"),
    "idx-wrong-magic": (
        lambda w: _ensemble(w, "--dataset", "fashion-mnist", "--data-dir", w["fashion_bad"]),
        r"t10k-labels-idx1-ubyte: not an IDX file: wrong magic number 0x08080801"),
    "unknown-data-set": (lambda w: _ensemble(w, "--dataset", "mnist"),
                         r"unknown data set 'mnist'; valid names: digits"),
    # image folders (--dataset folder)
    "folder-not-an-image": (
        lambda w: _ensemble(w, "--dataset", "folder", "--data-path", w["img_not_image"]),
        r"train/b/notes\.png: not an image Pillow can read"),
    "folder-mixed-sizes": (
        lambda w: _ensemble(w, "--dataset", "folder", "--data-path", w["img_sizes"]),
        r"test/c/img_0\.png: 9x9 pixels but .*img_0\.png is 6x5; pass --image-size"),
    "folder-empty-class": (
        lambda w: _ensemble(w, "--dataset", "folder", "--data-path", w["img_empty"]),
        r"train/d: empty class folder"),
    "folder-unknown-test-class": (
        lambda w: _ensemble(w, "--dataset", "folder", "--data-path", w["img_unknown"]),
        r"test/z: class 'z' is not one of the training classes \(a, b, c\)"),
    "folder-without-path": (lambda w: _ensemble(w, "--dataset", "folder"),
                            r"needs --data-path DIR"),
    "folder-is-a-file": (lambda w: _ensemble(w, "--dataset", "folder", "--data-path", w["nan"]),
                         r"nan\.npz: no such folder"),
    "image-size-zero": (
        lambda w: _ensemble(w, "--dataset", "folder", "--data-path", w["images"], "--image-size", "0"),
        r"image_size must be >= 1 pixel, got 0"),
    "image-size-on-digits": (lambda w: _ensemble(w, "--image-size", "8"),
                             r"data set 'digits' takes no options, got: image_size"),
    # external transfer sets (--transfer-data)
    "transfer-data-shape": (lambda w: _distill(w, "--transfer-data", w["transfer_shape"]),
                            r"transfer_shape\.npz: X inputs have shape \(64,\) but the training "
                            r"inputs have \(1, 8, 8\)"),
    "transfer-data-labels": (lambda w: _distill(w, "--transfer-data", w["transfer_labels"]),
                             r"transfer_labels\.npz: y holds labels in \[10, 10\]"),
    "transfer-data-missing": (lambda w: _distill(w, "--transfer-data", w["root"] / "none.npz"),
                              r"none\.npz: no such file or folder \(--transfer-data\)"),
    "transfer-data-not-npz": (lambda w: _distill(w, "--transfer-data", w["checkpoint"]),
                              r"checkpoint\.pt: not an \.npz archive \(a zip without \.npy arrays\)"),
    "transfer-data-with-fraction": (
        lambda w: _distill(w, "--transfer-data", w["transfer_labels"], "--transfer-fraction", "0.5"),
        r"--transfer-fraction choose\(s\) from the training split"),
    "transfer-data-folder-on-vectors": (
        lambda w: _distill(w, "--dataset", "synthetic", "--synthetic-classes", "10",
                           "--transfer-data", w["images"]),
        r"trained on other data|needs image training data"),
    # export and predict (one file out)
    "export-out-is-a-folder": (
        lambda w: ["export", "--model", w["teacher"], "--out", w["configs"]],
        r"configs is a folder; --out names the file to write"),
    "export-out-exists": (lambda w: ["export", "--model", w["teacher"], "--out", w["garbage"]],
                          r"garbage\.pt exists; pass --overwrite"),
    "export-not-a-model": (
        lambda w: ["export", "--model", w["checkpoint"], "--out", w["root"] / "m.ts"],
        r"checkpoint\.pt: not an ensemble-kd model file"),
    "export-corrupt-model": (
        lambda w: ["export", "--model", w["garbage"], "--out", w["root"] / "m.ts"],
        r"garbage\.pt: cannot be loaded safely"),
    "export-unknown-format": (
        lambda w: ["export", "--model", w["teacher"], "--format", "tflite", "--out", w["new"]],
        r"argument --format: invalid choice: 'tflite'"),
    "predict-out-exists": (
        lambda w: ["predict", "--model", w["teacher"], "--out", w["garbage"], *DIGITS],
        r"garbage\.pt exists; pass --overwrite"),
    "predict-out-is-a-folder": (
        lambda w: ["predict", "--teachers", w["run"], "--out", w["configs"], *DIGITS],
        r"configs is a folder"),
    "predict-other-data": (
        lambda w: ["predict", "--model", w["teacher"], "--out", w["root"] / "p.npz", *DIGITS,
                   "--data-seed", "3"], r"model was trained on other data"),
    "predict-bad-split": (
        lambda w: ["predict", "--model", w["teacher"], "--out", w["root"] / "p.npz", "--split",
                   "all"], r"argument --split: invalid choice: 'all'"),
    "confusion-report-into-a-run": (
        lambda w: ["confusion-report", "--model", w["teacher"], "--out", w["run"], *DIGITS],
        r"already holds a run; pass --resume to continue it or --overwrite"),
    # configs and flags
    "config-unknown-key": (
        lambda w: _ensemble(w, "--config", w["configs"] / "unknown.toml"),
        r"unknown key 'tempreature' .*valid keys: .*batch_size.*teachers"),
    "config-wrong-type": (lambda w: _ensemble(w, "--config", w["configs"] / "wrong_type.toml"),
                          r"config key 'teachers' must be int, got 'five'"),
    "config-not-toml": (lambda w: _ensemble(w, "--config", w["configs"] / "not_toml.toml"),
                        r"not_toml\.toml is not valid TOML"),
    "config-is-a-folder": (lambda w: _ensemble(w, "--config", w["configs"]),
                           r"configs is a folder, not a TOML file"),
    "unknown-flag": (lambda w: _ensemble(w, "--tempreature", "3"),
                     r"unrecognized arguments: --tempreature 3"),
    "flag-wrong-type": (lambda w: _ensemble(w, "--epochs", "two"),
                        r"argument --epochs: invalid int value: 'two'"),
    "epochs-zero": (lambda w: _ensemble(w, "--teacher-epochs", "0"), r"epochs must be >= 1, got 0"),
    "learning-rate-nan": (lambda w: _ensemble(w, "--lr", "nan"), r"lr must be a finite number > 0"),
    "no-teachers": (lambda w: _ensemble(w, "--teachers", "0"), r"teachers must be >= 1, got 0"),
    "convnet-on-vectors": (
        lambda w: _ensemble(w, "--dataset", "synthetic", "--teacher-arch", "convnet"),
        r"convnet needs image inputs"),
    "jitter-on-vectors": (lambda w: _ensemble(w, "--dataset", "synthetic", "--teacher-jitter", "1"),
                          r"teacher_jitter shifts images, but 'synthetic' inputs have shape \(32,\)"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_bad_input(world, capsys, case):
    argv, pattern = CLI_CASES[case]
    _cli_error(capsys, argv(world), pattern)


# ---------------------------------------------------------------- bring your own models and data


@pytest.fixture(scope="module")
def byo(tmp_path_factory) -> dict[str, Path]:
    """User modules (on sys.path only in the tests below), and files that name or hold models."""
    root = bm.write_modules(tmp_path_factory.mktemp("byo"))
    sys.path.insert(0, str(root))
    try:
        bm.forget()
        model = build_any(f"{bm.GOOD}:make", (1, 8, 8), 10, allow_imports=[bm.GOOD])
        save_model(root / "import_path_model.pt", model, {"n_classes": 10})
        torch.save(model.state_dict(), root / "state_dict.pt")
    finally:
        sys.path.remove(str(root))
        bm.forget()
    atomic_write_text(root / "arch.toml", f'teacher-arch = "{bm.GOOD}:make"\n')
    atomic_write_text(root / "kwargs_not_table.toml", "teacher-kwargs = 3\n")
    return {"root": root, "model": root / "import_path_model.pt", "state": root / "state_dict.pt",
            "arch_toml": root / "arch.toml", "kwargs_toml": root / "kwargs_not_table.toml"}


def _arch(w, arch, *extra):
    return _ensemble(w, "--teacher-arch", arch, *extra)


BYO_CASES = {
    "arch-module-missing": (lambda w, b: _arch(w, "ekd_no_such_module:make"),
                            r"module 'ekd_no_such_module' not found \(is it on PYTHONPATH\?\)"),
    "arch-not-an-import-path": (lambda w, b: _arch(w, "a:b:c"),
                                r"model 'a:b:c' is not an import path of the form pkg.module:function"),
    "arch-no-such-function": (lambda w, b: _arch(w, f"{bm.BAD}:nope"),
                              rf"module '{bm.BAD}' has no attribute 'nope'"),
    "arch-factory-raises": (lambda w, b: _arch(w, f"{bm.BAD}:raises"),
                            rf"factory '{bm.BAD}:raises' raised RuntimeError: no GPU here"),
    "arch-not-a-module": (lambda w, b: _arch(w, f"{bm.BAD}:not_module"),
                          rf"'{bm.BAD}:not_module' returned int, not an nn.Module"),
    "arch-wrong-classes": (lambda w, b: _arch(w, f"{bm.BAD}:wrong_classes"),
                           r"gives outputs of shape \(2, 3\) .*for 10 classes"),
    "arch-second-of-several-fails": (lambda w, b: _arch(w, "mlp", f"{bm.BAD}:raises"),
                                     rf"'{bm.BAD}:raises' raised RuntimeError"),
    "student-arch-wrong-inputs": (lambda w, b: _distill(w, "--student-arch", f"{bm.BAD}:wrong_inputs"),
                                  r"fails on inputs of shape \(1, 8, 8\)"),
    "kwargs-not-json": (lambda w, b: _arch(w, f"{bm.GOOD}:make", "--teacher-kwargs", "{width: 3"),
                        r"argument --teacher-kwargs: not valid JSON"),
    "kwargs-not-an-object": (lambda w, b: _arch(w, f"{bm.GOOD}:make", "--teacher-kwargs", "[3]"),
                             r"argument --teacher-kwargs: expected a JSON object"),
    "kwargs-unknown-option": (
        lambda w, b: _arch(w, f"{bm.GOOD}:make", "--teacher-kwargs", '{"depth": 3}'),
        rf"'{bm.GOOD}:make' raised TypeError: .*unexpected keyword argument 'depth'"),
    "kwargs-toml-not-a-table": (lambda w, b: _ensemble(w, "--config", b["kwargs_toml"]),
                                r"config key 'teacher_kwargs' must be dict, got 3"),
    "arch-in-toml-not-allowed": (
        lambda w, b: ["train-ensemble", "--out", w["new"], *DIGITS, "--config", b["arch_toml"],
                      "--teachers", "1", "--teacher-epochs", "1"],
                                 rf"would import and run module '{bm.GOOD}'.*--allow-import {bm.GOOD}"),
    "allow-import-not-a-module": (lambda w, b: _ensemble(w, "--allow-import", "1bad"),
                                  r"--allow-import: '1bad' is not a module name"),
    "saved-model-not-allowed": (
        lambda w, b: ["confusion-report", "--model", b["model"], "--out", w["new"], *DIGITS],
        rf"import_path_model\.pt: model '{bm.GOOD}:make' would import .*--allow-import {bm.GOOD}"),
    "generalist-not-allowed": (lambda w, b: [*_specialists(w), "--generalist", b["model"]],
                               rf"pass --allow-import {bm.GOOD} if you trust it"),
    "generalist-without-head": (
        lambda w, b: ["run", "--out", w["new"], *DIGITS, *TEACHERS, "--student-arch", f"{bm.BAD}:good"],
        rf"'{bm.BAD}:good' has none: give it one or pass --no-specialists"),
    "hub-package-missing": (lambda w, b: _arch(w, "timm/resnet18"),
                            r"need the timm package, which is not installed"),
    "dataset-function-not-a-dict": (lambda w, b: _ensemble(w, "--dataset", f"{bm.BAD}:data_not_dict"),
                                    r"returned list, expected a dict with keys X_train"),
    "dataset-function-raises": (lambda w, b: _ensemble(w, "--dataset", f"{bm.BAD}:data_raises"),
                                r"raised OSError: the share is not mounted"),
    "dataset-function-missing-keys": (
        lambda w, b: _ensemble(w, "--dataset", f"{bm.BAD}:data_missing"),
        r"data set 'ekd_byo_bad:data_missing': missing key\(s\) X_test, y_test"),
    "teacher-model-missing": (
        lambda w, b: ["distill", "--teacher-model", w["root"] / "nope.pt", "--out", w["new"],
                      *DIGITS, *STUDENT], r"nope\.pt: no such file"),
    "teacher-model-garbage": (
        lambda w, b: ["distill", "--teacher-model", w["garbage"], "--out", w["new"], *DIGITS,
                      *STUDENT], r"garbage\.pt: cannot be loaded safely"),
    "teacher-model-state-dict-other-arch": (
        lambda w, b: ["distill", "--teacher-model", b["state"], "--out", w["new"], *DIGITS,
                      *STUDENT], r"state_dict\.pt: the state dict does not fit 'convnet'"),
    "teacher-model-and-teachers": (
        lambda w, b: [*_distill(w), "--teacher-model", b["state"]],
        r"argument --teacher-model: not allowed with argument --teachers"),
}


@pytest.mark.parametrize("case", list(BYO_CASES))
def test_cli_refuses_bad_models_and_data_of_your_own(world, byo, capsys, monkeypatch, case):
    """An import path or file of the user's that does not work: one line, nothing written."""
    if case == "hub-package-missing":
        monkeypatch.setitem(sys.modules, "timm", None)  # not installed, even where it is
    monkeypatch.syspath_prepend(str(byo["root"]))
    before = _snapshot(byo["root"])
    argv, pattern = BYO_CASES[case]
    try:
        _cli_error(capsys, argv(world, byo), pattern)
    finally:
        bm.forget()
    assert _snapshot(byo["root"]) == before
    assert not (byo["root"] / bm.MARKER_FILE).exists()


# ---------------------------------------------------------------- command line, real processes

SUBPROCESS_CASES = ["run-already-there", "fashion-mnist-missing", "truncated-model"]


def test_cli_refuses_bad_input_in_a_real_process(world):
    """The same one-line errors from ``python -m ensemble_kd`` (no warning or traceback on stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = {  # all at once: each spends most of its time importing
        case: subprocess.Popen(
            [sys.executable, "-m", "ensemble_kd", *map(str, CLI_CASES[case][0](world))],
            env=env, cwd=world["root"].parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for case in SUBPROCESS_CASES
    }
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (case, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (case, err)
        assert re.search(CLI_CASES[case][1], lines[0]), (case, lines[0])
        assert out == ""


# ---------------------------------------------------------------- Python API: losses


Z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))  # (B, C)
V = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(1))  # (K, B, C)
Y = torch.tensor([0, 3, 9, 2])  # (B,)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"teacher_logits": V[..., :5]}, r"class-count mismatch: student has 10 classes, teacher"),
        ({"student_logits": Z.index_fill(1, torch.tensor([3]), float("nan"))},
         r"student logits contain non-finite values"),
        ({"teacher_logits": V.index_fill(2, torch.tensor([0]), float("inf"))},
         r"teacher logits contain non-finite values"),
        ({"temperature": 0.0}, r"temperature must be finite and > 0"),
        ({"temperature": -2.0}, r"temperature must be finite and > 0"),
        ({"temperature": float("nan")}, r"temperature must be finite and > 0"),
        ({"temperature": float("inf")}, r"temperature must be finite and > 0"),
        ({"alpha": -0.1}, r"alpha must lie in \[0, 1\]"),
        ({"alpha": 1.01}, r"alpha must lie in \[0, 1\]"),
        ({"alpha": float("nan")}, r"alpha must lie in \[0, 1\]"),
        ({"teacher_weights": [1.0, -0.5]}, r"teacher_weights must be finite and non-negative"),
        ({"teacher_weights": [0.0, 0.0]}, r"teacher_weights must not all be zero"),
        ({"teacher_weights": [1.0, 1.0, 1.0]}, r"teacher_weights has 3 entries but there are 2"),
        ({"labels": torch.tensor([0, 3, 10, 2])}, r"labels out of range: .*\[0, 9\], found \[0, 10\]"),
        ({"labels": torch.tensor([-1, 3, 9, 2])}, r"labels out of range"),
        ({"combine": "median"}, r"combine must be one of sum, mean_probs, mean_logits"),
    ],
    ids=["class-count", "nan-student", "inf-teacher", "T-zero", "T-negative", "T-nan", "T-inf",
         "alpha-negative", "alpha-above-one", "alpha-nan", "weights-negative", "weights-zero",
         "weights-count", "label-too-big", "label-negative", "combine-mode"],
)
def test_distillation_loss_refuses(kwargs, pattern):
    args = {"student_logits": Z, "teacher_logits": V, "labels": Y, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        distillation_loss(**args)


def test_distill_config_refuses_jitter_with_cached_teachers():
    with pytest.raises(ValueError, match=r"online=True / --online"):
        DistillConfig(jitter=2).validate()


# ---------------------------------------------------------------- Python API: teachers, students


def test_teachers_with_different_class_counts(world):
    with pytest.raises(ValueError, match=r"different numbers of classes: \[3, 10\]"):
        load_teachers(sorted(world["mixed"].glob("teacher_*/model.pt")))


def test_teacher_trained_on_another_data_set(world):
    other = load_dataset("synthetic", n_classes=10, n_groups=2, n_train=200, n_test=50)
    with pytest.raises(ValueError, match=r"trained on other data \('digits'.*\('synthetic'\)"):
        load_teachers([world["teacher"]], splits=other)


def test_train_ensemble_refuses_a_folder_of_other_data(world):
    other = load_dataset("digits", seed=5)  # another validation split: other training data
    with pytest.raises(ValueError, match=r"was trained on other data; use a new folder"):
        train_ensemble(other, ModelSpec("mlp", (16,)), 1, TrainConfig(epochs=1),
                       world["run"] / "teachers")


def test_student_with_the_wrong_number_of_outputs(world, digits):
    teachers, _ = load_teachers([world["teacher"]], splits=digits)
    with pytest.raises(ValueError, match=r"the student has 5 outputs but the teachers have 10"):
        distill(_tiny_model(5), teachers, make_transfer_set(digits, fraction=0.1),
                TrainConfig(epochs=1), run_dir=None)


def test_non_finite_inputs(digits):
    x = digits.x_train.clone()
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x_train holds non-finite values"):
        Splits("toy", x, digits.y_train, digits.x_val, digits.y_val, digits.x_test,
               digits.y_test, list(digits.class_names))
    with pytest.raises(ValueError, match=r"inputs contain non-finite values"):
        train(_tiny_model(), TensorBatches(x, digits.y_train), TrainConfig(epochs=1))


def test_labels_out_of_range_in_a_data_set(digits):
    y = digits.y_train.clone()
    y[0] = 10
    with pytest.raises(ValueError, match=r"y_train holds labels in \[0, 10\] but there are only 10"):
        Splits("toy", digits.x_train, y, digits.x_val, digits.y_val, digits.x_test,
               digits.y_test, list(digits.class_names))


# ---------------------------------------------------------------- Python API: transfer sets


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_transfer_fraction_outside_0_1(digits, fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        make_transfer_set(digits, fraction=fraction)


def test_transfer_set_omitting_every_class(digits):
    with pytest.raises(ValueError, match=r"omits every class"):
        make_transfer_set(digits, omit_classes=range(10))


def test_empty_transfer_set():
    x = torch.zeros(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 has no training example
    splits = Splits("toy", x, y, x[:2], y[:2], x[:2], y[:2], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"the transfer set is empty"):
        make_transfer_set(splits, omit_classes=[0, 1])


# ---------------------------------------------------------------- Python API: specialists


@pytest.mark.parametrize(
    ("subsets", "pattern"),
    [
        ([[0, 1], [2, 2, 3]], r"subsets\[1\] contains class 2 more than once"),
        ([[0, 12]], r"subsets\[0\] contains class 12 but there are only 10 classes"),
        ([[-1, 3]], r"subsets\[0\] contains negative class -1"),
        ([[4]], r"subsets\[0\] has 1 class\(es\); a specialist subset needs at least 2"),
        ([list(range(10))], r"covers all 10 classes"),
        ([], r"subsets is empty"),
    ],
    ids=["duplicate", "out-of-range", "negative", "one-class", "every-class", "none"],
)
def test_bad_subsets(subsets, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_subsets(subsets, 10)


@pytest.mark.parametrize("n_clusters", [0, 5, -1])
def test_n_clusters_out_of_range(n_clusters):
    cm = np.ones((4, 4))
    with pytest.raises(ValueError, match=rf"n_clusters is {n_clusters}, must be in \[1, 4\]"):
        cluster_classes(cm, n_clusters)


def test_all_zero_confusion():
    with pytest.raises(ValueError, match=r"no off-diagonal counts: no confusion to cluster"):
        cluster_classes(np.zeros((5, 5)), 2)


# ---------------------------------------------------------------- Python API: files


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("truncated", r"truncated\.pt: cannot be loaded safely \(truncated, corrupt"),
        ("garbage", r"garbage\.pt: cannot be loaded safely"),
        ("wrong_arch", r"weights do not match the architecture"),
        ("checkpoint", r"not an ensemble-kd model file \(format 'ensemble-kd/train-checkpoint'\)"),
    ],
)
def test_bad_model_files(world, key, pattern):
    with pytest.raises(FormatError, match=pattern):
        load_model(world[key])


def test_missing_model_file(world):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt: no such file"):
        load_model(world["root"] / "nothing.pt")


def test_model_file_is_not_a_checkpoint(world):
    with pytest.raises(FormatError, match=r"not an ensemble-kd training checkpoint"):
        load_checkpoint(world["teacher"])


def test_resume_with_a_checkpoint_of_other_settings(tmp_path, digits):
    batches = TensorBatches(digits.x_train, digits.y_train, batch_size=256)
    train(_tiny_model(), batches, TrainConfig(epochs=1), run_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"written by a run with other settings or data"):
        train(_tiny_model(widths=(16,)), batches, TrainConfig(epochs=2, lr=0.1), run_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def _teachers(seed: int) -> list[torch.nn.Module]:
    return [_tiny_model(seed=seed).eval(), _tiny_model(seed=seed + 1).eval()]


def _logits(teachers, x) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([t(x) for t in teachers])  # (K, N, C)


def test_truncated_cache_is_refused_then_recomputed(tmp_path, digits, caplog):
    teachers, x = _teachers(0), digits.x_train[:100]
    write_cache(teachers, x, tmp_path)
    logits = tmp_path / "logits.npy"
    logits.write_bytes(logits.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"logits\.npy: truncated or corrupt"):
        open_cache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ensemble_kd.cache"):
        cache = ensure_cache(teachers, x, tmp_path)
    assert "recomputing the teacher cache" in caplog.text
    torch.testing.assert_close(cache.all(), _logits(teachers, x))


def test_stale_cache_is_recomputed_not_reused(tmp_path, digits, caplog):
    x = digits.x_train[:100]
    old = ensure_cache(_teachers(0), x, tmp_path)
    new_teachers = _teachers(7)
    with pytest.raises(FormatError, match=r"fingerprint does not match .*\(stale cache\)"):
        open_cache(tmp_path, expect_fingerprint="0" * 64)
    with caplog.at_level(logging.WARNING, logger="ensemble_kd.cache"):
        new = ensure_cache(new_teachers, x, tmp_path)
    assert "stale cache" in caplog.text
    assert new.fingerprint != old.fingerprint
    torch.testing.assert_close(new.all(), _logits(new_teachers, x))


def test_idx_wrong_magic_and_truncation(tmp_path):
    write_idx(tmp_path / "ok", np.arange(12, dtype=np.uint8).reshape(3, 4))
    raw = (tmp_path / "ok").read_bytes()
    (tmp_path / "magic").write_bytes(b"\x01" + raw[1:])
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=r"magic: not an IDX file: wrong magic number 0x01000802"):
        read_idx(tmp_path / "magic")
    with pytest.raises(ValueError, match=r"short: truncated IDX file: header shape \(3, 4\) needs 12"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("missing_keys", r"missing_keys\.npz: missing key\(s\) y_test \(found: X_train, y_train, X_test"),
        ("mismatch", r"X_train has shape \(10, 4\) but y_train has 9 labels"),
        ("nan", r"X_train holds non-finite values"),
    ],
)
def test_bad_npz_files(world, key, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_dataset("npz", path=world[key])


def test_missing_fashion_mnist_says_how_to_get_it(world):
    with pytest.raises(FileNotFoundError, match=r"missing from .*fashion_empty: train-images-idx3"
                                                r".*dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=world["fashion_empty"])


def test_config_file_unknown_key_lists_the_valid_ones(world):
    with pytest.raises(ValueError, match=r"unknown key 'tempreature'") as info:
        read_config_file(world["configs"] / "unknown.toml", GROUPS)
    valid = str(info.value).split("valid keys: ")[1].split(", ")
    assert {"temperature", "alpha", "teachers", "epochs"} <= set(valid)


def test_config_file_value_of_the_wrong_type(world):
    with pytest.raises(ValueError, match=r"config key 'teachers' must be int, got 'five'"):
        read_config_file(world["configs"] / "wrong_type.toml", GROUPS)


def test_predictions_with_mismatched_lengths(world, tmp_path):
    with pytest.raises(ValueError, match=r"probs has 3 rows but labels has 2 entries"):
        save_predictions(tmp_path / "p.npz", np.full((3, 2), 0.5), np.zeros(2, np.int64))
    assert not (tmp_path / "p.npz").exists()


def test_teacher_meta_matches_the_digits(world, digits):
    """Sanity check of the world itself: the run's teacher belongs to the digits."""
    _, meta = load_model(world["teacher"])
    assert meta["data_fingerprint"] == data_meta(digits)["data_fingerprint"]
