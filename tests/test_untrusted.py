"""Untrusted files: a checkpoint or cache from a stranger must not run code when loaded.

Every file here carries a pickled payload whose unpickling would create a marker file (a stand-in for
any code an attacker could run). Each entry point of the Python API and of the command line that
reads checkpoints, models, caches or prediction files must refuse it with a clear error, and the
marker must not exist afterwards. The first tests prove that the payloads are live: an unsafe loader
does create the marker, so the other tests can fail.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_kd.batching import TensorBatches
from ensemble_kd.cache import ensure_cache, open_cache, write_cache
from ensemble_kd.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    load_checkpoint,
    load_model,
    model_meta,
    save_model,
)
from ensemble_kd.cli import main
from ensemble_kd.cli.parser import COMMANDS, build_parser, resolve_config
from ensemble_kd.cli.run_record import prepare_out
from ensemble_kd.data import load_dataset, make_transfer_set
from ensemble_kd.distill import DistillConfig, distill
from ensemble_kd.ensemble import ModelSpec, data_meta, load_teachers, train_ensemble
from ensemble_kd.io import FormatError, atomic_write_json, load_tensors
from ensemble_kd.models import build_model
from ensemble_kd.train import TrainConfig, train
from specialists.confusion import load_predictions
from specialists.specialist import load_specialist, load_specialists, train_specialists

REFUSED = "cannot be loaded safely"
REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _model(seed: int = 0, n_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (1, 8, 8), n_classes, widths=[8])


def evil_model(path: Path, marker: Path, meta: dict | None = None) -> Path:
    """A model file that is real in every way but one: a pickled payload beside the weights."""
    m = _model()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": MODEL_FORMAT, "version": 1, "spec": json.dumps(m.spec),
                "meta": json.dumps(meta or {}), "state_dict": m.state_dict(),
                "payload": Payload(marker)}, path)
    return path


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "identity": "{}", "epoch": 1,
                "model": _model().state_dict(), "payload": Payload(marker)}, path)
    return path


def evil_npy(path: Path, marker: Path) -> Path:
    """An object array whose elements unpickle into the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.save(name) would append .npy to other names
        np.save(f, np.array([Payload(marker), 1.0], dtype=object), allow_pickle=True)
    return path


@pytest.fixture(scope="module")
def digits_meta(digits) -> dict:
    return data_meta(digits)


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a pickled payload ran"


# ---------------------------------------------------------------- the payloads are live


def test_model_payload_runs_under_an_unsafe_loader(tmp_path):
    live = tmp_path / "live"
    path = evil_model(tmp_path / "m.pt", live)
    torch.load(path, weights_only=False)  # what a careless loader would do
    assert live.exists()


def test_npy_payload_runs_under_an_unsafe_loader(tmp_path):
    live = tmp_path / "live"
    np.load(evil_npy(tmp_path / "a.npy", live), allow_pickle=True)
    assert live.exists()


# ---------------------------------------------------------------- every reader in the code


def _unsafe_loads(tree: ast.AST) -> list[str]:
    """``torch.load`` without ``weights_only=True``, ``np.load`` without ``allow_pickle=False``,
    and any ``pickle.load(s)``."""
    required = {"torch": ("weights_only", True), "np": ("allow_pickle", False),
                "numpy": ("allow_pickle", False)}
    hits = []
    for node in ast.walk(tree):
        f = node.func if isinstance(node, ast.Call) else None
        if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)):
            continue
        owner = f.value.id
        if owner == "pickle" and f.attr in ("load", "loads", "Unpickler"):
            hits.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
        elif f.attr == "load" and owner in required:
            key, value = required[owner]
            ok = any(k.arg == key and isinstance(k.value, ast.Constant) and k.value.value is value
                     for k in node.keywords)
            if not ok:
                hits.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return hits


def test_every_reader_refuses_pickles():
    """A static check: the package and scripts load tensors and arrays only without pickle."""
    found = []
    for folder in ("ensemble_kd", "specialists", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            hits = _unsafe_loads(ast.parse(path.read_text(encoding="utf-8")))
            found += [f"{path.relative_to(REPO)} {h}" for h in hits]
    assert not found, "loads that could unpickle code:\n" + "\n".join(found)


def test_the_reader_check_flags_unsafe_loads():
    code = """
torch.load(p)
torch.load(p, weights_only=False)
np.load(p, allow_pickle=True)
pickle.loads(b)
torch.load(p, map_location="cpu", weights_only=True)
np.load(p, mmap_mode="r", allow_pickle=False)
"""
    assert [h.split(":")[0] for h in _unsafe_loads(ast.parse(code))] == [
        "line 2", "line 3", "line 4", "line 5"]


# ---------------------------------------------------------------- Python API


@pytest.mark.parametrize(
    "load", [load_tensors, load_model, model_meta, load_specialist, lambda p: load_teachers([p])],
    ids=["load_tensors", "load_model", "model_meta", "load_specialist", "load_teachers"],
)
def test_model_loaders_refuse_pickled_code(tmp_path, marker, digits_meta, load):
    path = evil_model(tmp_path / "model.pt", marker, meta=digits_meta)
    with pytest.raises(FormatError, match=REFUSED):
        load(path)


def test_load_checkpoint_refuses_pickled_code(tmp_path, marker):
    with pytest.raises(FormatError, match=REFUSED):
        load_checkpoint(evil_checkpoint(tmp_path / "checkpoint.pt", marker))


def test_train_resume_refuses_a_pickled_checkpoint(tmp_path, marker, digits):
    evil_checkpoint(tmp_path / "run" / "checkpoint.pt", marker)
    batches = TensorBatches(digits.x_train, digits.y_train, batch_size=64)
    with pytest.raises(FormatError, match=REFUSED):
        train(_model(), batches, TrainConfig(epochs=1), run_dir=tmp_path / "run")


@pytest.mark.parametrize("planted", ["model.pt", "checkpoint.pt"])
def test_train_ensemble_resume_refuses_pickled_files(tmp_path, marker, digits, planted):
    target = tmp_path / "teachers" / "teacher_0" / planted
    (evil_model if planted == "model.pt" else evil_checkpoint)(target, marker)
    with pytest.raises(FormatError, match=REFUSED):
        train_ensemble(digits, ModelSpec("mlp", (8,)), 1, TrainConfig(epochs=1),
                       tmp_path / "teachers")


def test_distill_resume_refuses_a_pickled_checkpoint(tmp_path, marker, digits):
    evil_checkpoint(tmp_path / "run" / "checkpoint.pt", marker)
    transfer = make_transfer_set(digits, fraction=0.2)
    with pytest.raises(FormatError, match=REFUSED):
        distill(_model(1), [_model(2)], transfer, TrainConfig(epochs=1), DistillConfig(),
                run_dir=tmp_path / "run")


@pytest.mark.parametrize("planted", ["model.pt", "checkpoint.pt"])
def test_train_specialists_refuses_pickled_files(tmp_path, marker, digits, planted):
    target = tmp_path / "out" / "specialist_0" / planted
    (evil_model if planted == "model.pt" else evil_checkpoint)(target, marker)
    with pytest.raises(FormatError, match=REFUSED):
        train_specialists(_model(), [[3, 5]], digits, TrainConfig(epochs=1), None, tmp_path / "out")


def test_load_specialists_refuses_pickled_code(tmp_path, marker):
    atomic_write_json(tmp_path / "subsets.json", {"subsets": [[3, 5]]})
    evil_model(tmp_path / "specialist_0" / "model.pt", marker)
    with pytest.raises(FormatError, match=REFUSED):
        load_specialists(tmp_path)


def test_cache_with_pickled_arrays_is_refused_and_recomputed(tmp_path, marker, digits):
    teachers, x = [_model(3)], digits.x_train[:50]
    write_cache(teachers, x, tmp_path / "cache")
    evil_npy(tmp_path / "cache" / "logits.npy", marker)
    with pytest.raises(FormatError, match="logits.npy"):
        open_cache(tmp_path / "cache")
    cache = ensure_cache(teachers, x, tmp_path / "cache")  # rebuilt, never unpickled
    with torch.no_grad():
        expected = teachers[0].eval()(x)
    torch.testing.assert_close(cache.all()[0], expected)


def test_predictions_with_pickled_arrays_are_refused(tmp_path, marker):
    path = tmp_path / "preds.npz"
    with open(path, "wb") as f:
        np.savez(f, probs=np.array([Payload(marker)], dtype=object), labels=np.zeros(1, np.int64))
    with pytest.raises(FormatError, match="preds.npz"):
        load_predictions(path)


def test_npz_data_set_with_pickled_arrays_is_refused(tmp_path, marker):
    path = tmp_path / "data.npz"
    evil = np.array([Payload(marker)] * 4, dtype=object)
    with open(path, "wb") as f:
        np.savez(f, X_train=evil, y_train=np.zeros(4, np.int64), X_test=evil,
                 y_test=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="without pickle"):
        load_dataset("npz", path=path)


def test_a_raw_pickle_is_refused(tmp_path, marker):
    """Not even a zip: a bare pickle stream named like a checkpoint."""
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"format": MODEL_FORMAT, "payload": Payload(marker)}, protocol=2))
    with pytest.raises(FormatError, match=REFUSED):
        load_model(path)


# ---------------------------------------------------------------- command line

# tiny settings; every command reads the digits
DATA = ["--dataset", "digits", "--quiet", "--device", "cpu"]
OPTS = [*DATA, "--epochs", "1", "--batch-size", "64"]
TEACHER = ["--teachers", "1", "--teacher-arch", "mlp", "--teacher-widths", "8", "--teacher-jitter",
           "0", "--teacher-epochs", "1", "--teacher-dropout", "0"]
STUDENT = ["--student-arch", "mlp", "--student-widths", "8", "--unlabelled", "--temperature", "4"]


def _cli_refuses(capsys, argv: list[str]) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert REFUSED in err


def test_cli_evaluate_refuses_a_pickled_teacher(tmp_path, marker, digits_meta, capsys):
    evil_model(tmp_path / "run" / "teachers" / "teacher_0" / "model.pt", marker, digits_meta)
    _cli_refuses(capsys, ["evaluate", "--run", str(tmp_path / "run"), *DATA])


def test_cli_evaluate_refuses_a_pickled_student(tmp_path, marker, digits_meta, capsys):
    evil_model(tmp_path / "run" / "student" / "model.pt", marker, digits_meta)
    _cli_refuses(capsys, ["evaluate", "--run", str(tmp_path / "run"), *DATA])


def test_cli_distill_refuses_pickled_teachers(tmp_path, marker, digits_meta, capsys):
    evil_model(tmp_path / "t" / "teacher_0" / "model.pt", marker, digits_meta)
    _cli_refuses(capsys, ["distill", "--teachers", str(tmp_path / "t"), "--out",
                          str(tmp_path / "out"), *OPTS, *STUDENT])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["--model", "--teachers"])
def test_cli_confusion_report_refuses_pickled_models(tmp_path, marker, digits_meta, capsys, source):
    path = evil_model(tmp_path / "t" / "teacher_0" / "model.pt", marker, digits_meta)
    arg = str(path) if source == "--model" else str(tmp_path / "t")
    _cli_refuses(capsys, ["confusion-report", source, arg, "--out", str(tmp_path / "r"), *DATA])


def test_cli_train_specialists_refuses_a_pickled_generalist(tmp_path, marker, digits_meta, capsys):
    path = evil_model(tmp_path / "g.pt", marker, digits_meta)
    _cli_refuses(capsys, ["train-specialists", "--generalist", str(path), "--out",
                          str(tmp_path / "out"), *OPTS])
    assert not (tmp_path / "out").exists()


def _prepared_run(command: str, argv: list[str], out: Path) -> None:
    """Write ``out/config.json`` as the command would, so that ``--resume`` gets to the checkpoint."""
    args = build_parser().parse_args([command, *argv, "--out", str(out)])
    cfg = resolve_config(args, COMMANDS[command][1]).resolve_auto((1, 8, 8), 1213)  # digits
    prepare_out(out, cfg, command, resume=False, overwrite=False)


def test_cli_resume_refuses_a_pickled_teacher_checkpoint(tmp_path, marker, capsys):
    out = tmp_path / "run"
    _prepared_run("train-ensemble", [*OPTS, *TEACHER], out)
    evil_checkpoint(out / "teachers" / "teacher_0" / "checkpoint.pt", marker)
    _cli_refuses(capsys, ["train-ensemble", "--out", str(out), "--resume", *OPTS, *TEACHER])


def test_cli_resume_refuses_a_pickled_student_checkpoint(tmp_path, marker, digits, capsys):
    teacher = _model(5)
    save_model(tmp_path / "t" / "teacher_0" / "model.pt", teacher, data_meta(digits))
    argv = ["--teachers", str(tmp_path / "t"), *OPTS, *STUDENT]
    out = tmp_path / "run"
    _prepared_run("distill", argv, out)
    evil_checkpoint(out / "student" / "checkpoint.pt", marker)
    _cli_refuses(capsys, ["distill", "--out", str(out), "--resume", *argv])
