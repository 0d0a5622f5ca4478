"""``ensemble-kd export`` (TorchScript, ONNX when installed) and ``ensemble-kd predict``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_kd.checkpoint import load_model
from ensemble_kd.cli import main
from ensemble_kd.data import load_dataset
from ensemble_kd.predict import predict_logits
from specialists.predictions import load_predictions

DATA = ["--dataset", "digits", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    argv = ["train-ensemble", "--out", str(out), *DATA, "--teachers", "2", "--teacher-arch",
            "convnet", "--teacher-widths", "4", "8", "--teacher-epochs", "1", "--batch-size", "64"]
    assert main(argv) == 0
    return out


FRESH = """
import sys, numpy as np, torch
m = torch.jit.load(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], m(x).detach().numpy())
assert not any(k.startswith(("ensemble_kd", "specialists")) for k in sys.modules)
"""


def test_torchscript_gives_the_same_logits_in_a_fresh_process(run, tmp_path):
    model_file = run / "teachers" / "teacher_0" / "model.pt"
    out = tmp_path / "student.ts"
    assert main(["export", "--model", str(model_file), "--format", "torchscript", "--out",
                 str(out), "--quiet"]) == 0
    x = load_dataset("digits").x_test[:50]  # a batch size other than the trace's
    np.save(tmp_path / "x.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120,
                       env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    want = predict_logits(load_model(model_file)[0], x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want.numpy(), rtol=1e-5, atol=1e-6)
    files = {"meta.json": ""}
    torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files["meta.json"])
    assert meta["input_shape"] == [1, 8, 8] and meta["class_names"][:2] == ["0", "1"]


def test_onnx_gives_the_same_logits(run, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model_file = run / "teachers" / "teacher_0" / "model.pt"
    out = tmp_path / "student.onnx"
    assert main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(out),
                 "--quiet"]) == 0
    x = load_dataset("digits").x_test[:50]
    got = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0]
    want = predict_logits(load_model(model_file)[0], x)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_onnx_without_the_package_says_how_to_get_it(run, tmp_path, capsys):
    try:
        import onnx  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("onnx is installed")
    rc = main(["export", "--model", str(run / "teachers" / "teacher_0" / "model.pt"), "--format",
               "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install 'ensemble-kd[onnx]'" in err[0]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("split", ["test", "val", "train"])
def test_predict_writes_what_confusion_report_reads(run, tmp_path, split):
    out = tmp_path / "preds.npz"
    assert main(["predict", "--teachers", str(run), "--split", split, "--out", str(out),
                 *DATA]) == 0
    probs, labels, names = load_predictions(out)
    splits = load_dataset("digits")
    y = getattr(splits, f"y_{split}")
    assert probs.shape == (len(y), 10) and names == [str(i) for i in range(10)]
    np.testing.assert_array_equal(labels, y.numpy())
    teachers = [load_model(run / "teachers" / f"teacher_{k}" / "model.pt")[0] for k in range(2)]
    x = getattr(splits, f"x_{split}")
    want = torch.stack([torch.softmax(predict_logits(m, x), -1) for m in teachers]).mean(0)
    np.testing.assert_allclose(probs, want.numpy(), rtol=1e-5, atol=1e-6)
    report = tmp_path / "rep"
    assert main(["confusion-report", "--predictions", str(out), "--out", str(report),
                 "--quiet"]) == 0
    assert (report / "report.html").is_file()


def test_predict_of_one_model(run, tmp_path):
    out = tmp_path / "one.npz"
    model_file = run / "teachers" / "teacher_1" / "model.pt"
    assert main(["predict", "--model", str(model_file), "--out", str(out), *DATA]) == 0
    probs, labels, _ = load_predictions(out)
    x = load_dataset("digits").x_test
    want = torch.softmax(predict_logits(load_model(model_file)[0], x), -1)
    np.testing.assert_allclose(probs, want.numpy(), rtol=1e-5, atol=1e-6)
