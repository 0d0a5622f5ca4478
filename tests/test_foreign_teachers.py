"""Teachers trained elsewhere (``distill --teacher-model FILE ...``): TorchScript files, state dicts
with the import path that builds them, and ensemble-kd model files, distilled like our own."""

from __future__ import annotations

import json
import re

import byo_modules as bm
import pytest
import torch

from ensemble_kd.checkpoint import save_model
from ensemble_kd.cli import main
from ensemble_kd.ensemble import ModelSpec
from ensemble_kd.factories import ImportNotAllowed, build_any
from ensemble_kd.foreign import is_torchscript, load_foreign_teacher
from ensemble_kd.io import FormatError
from ensemble_kd.models import build_model

SHAPE, C = (1, 8, 8), 10


@pytest.fixture
def mods(tmp_path_factory, monkeypatch):
    folder = bm.write_modules(tmp_path_factory.mktemp("usermods"))
    monkeypatch.syspath_prepend(str(folder))
    bm.forget()
    yield folder
    bm.forget()


@pytest.fixture
def files(tmp_path, mods):
    """A TorchScript file, a state dict of a user's model and an ensemble-kd model file."""
    torch.manual_seed(0)
    scripted = torch.jit.script(build_model("mlp", SHAPE, C, widths=[12]).eval())
    torch.jit.save(scripted, str(tmp_path / "ts.pt"))
    own = build_any(f"{bm.GOOD}:make", SHAPE, C, allow_imports=[bm.GOOD], width=12)
    torch.save(own.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": own.state_dict()}, tmp_path / "sd_wrapped.pt")
    save_model(tmp_path / "ekd.pt", build_model("mlp", SHAPE, C, widths=[8]))
    bm.forget()
    return {"ts": tmp_path / "ts.pt", "sd": tmp_path / "sd.pt", "wrapped": tmp_path / "sd_wrapped.pt",
            "ekd": tmp_path / "ekd.pt", "scripted": scripted, "own": own.eval()}


def test_torchscript_teacher_gives_the_same_logits(files):
    assert is_torchscript(files["ts"]) and not is_torchscript(files["sd"])
    teacher = load_foreign_teacher(files["ts"], SHAPE, C)
    x = torch.rand(5, *SHAPE)
    torch.testing.assert_close(teacher(x), files["scripted"](x))


@pytest.mark.parametrize("key", ["sd", "wrapped"])
def test_state_dict_built_by_an_import_path(files, key):
    spec = ModelSpec(f"{bm.GOOD}:make", kwargs={"width": 12})
    with pytest.raises(ImportNotAllowed, match=f"--allow-import {bm.GOOD}"):
        load_foreign_teacher(files[key], SHAPE, C, spec=spec, allow_imports=())
    teacher = load_foreign_teacher(files[key], SHAPE, C, spec=spec, allow_imports=[bm.GOOD])
    x = torch.rand(5, *SHAPE)
    torch.testing.assert_close(teacher(x), files["own"](x))


def test_foreign_teachers_that_do_not_fit(files, tmp_path):
    with pytest.raises(FormatError, match=r"sd\.pt: a state dict; pass --teacher-arch"):
        load_foreign_teacher(files["sd"], SHAPE, C)
    with pytest.raises(FormatError, match=r"sd\.pt: the state dict does not fit 'mlp'"):
        load_foreign_teacher(files["sd"], SHAPE, C, spec=ModelSpec("mlp", (20,)))
    with pytest.raises(ValueError, match=r"ts\.pt' gives outputs of shape \(2, 10\) .* 3 classes"):
        load_foreign_teacher(files["ts"], SHAPE, 3)
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FormatError, match=r"junk\.pt: cannot be loaded safely"):
        load_foreign_teacher(tmp_path / "junk.pt", SHAPE, C)
    torch.save({"lr": 0.1}, tmp_path / "other.pt")
    with pytest.raises(FormatError, match=r"other\.pt: neither TorchScript, an ensemble-kd model"):
        load_foreign_teacher(tmp_path / "other.pt", SHAPE, C)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt: no such file"):
        load_foreign_teacher(tmp_path / "missing.pt", SHAPE, C)


def test_distill_teachers_trained_elsewhere(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["distill", "--teacher-model", files["sd"], files["ts"], files["ekd"],
            "--teacher-arch", f"{bm.GOOD}:make", "mlp", "--teacher-kwargs", '{"width": 12}',
            "--dataset", "digits", "--student-arch", "mlp", "--student-widths", "8",
            "--epochs", "1", "--batch-size", "128", "--device", "cpu", "--out", out, "--quiet"]
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    names = [r["model"] for r in summary["rows"]]
    assert "ensemble of 3" in names and "distilled student" in names
    # a TorchScript file of the wrong class count: one line, nothing written
    rc = main(["distill", "--teacher-model", str(files["ts"]), "--dataset", "synthetic",
               "--synthetic-classes", "5", "--synthetic-groups", "2", "--out", str(tmp_path / "bad"),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.search(r"fails on inputs of shape \(32,\)", err[0])
    assert not (tmp_path / "bad").exists()
