"""Bring your own models and data: import paths, the consent to import, several teacher
architectures, a data set returned by a function, and runs of them that evaluate and specialise."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import byo_modules as bm
import numpy as np
import pytest
import torch

from ensemble_kd.checkpoint import load_model, save_model
from ensemble_kd.cli import main
from ensemble_kd.ensemble import ModelSpec, train_ensemble
from ensemble_kd.factories import ImportNotAllowed, allowing_imports, build_any, is_allowed
from ensemble_kd.io import FormatError, atomic_write_json
from ensemble_kd.train import TrainConfig
from ensemble_kd.user_data import load_dataset_function

FAST = ["--epochs", "1", "--teacher-epochs", "1", "--batch-size", "128", "--device", "cpu",
        "--quiet"]


@pytest.fixture
def mods(tmp_path_factory, monkeypatch) -> Path:
    """A folder on sys.path with the test's user modules, none of them imported yet."""
    folder = bm.write_modules(tmp_path_factory.mktemp("usermods"))
    monkeypatch.syspath_prepend(str(folder))
    bm.forget()
    yield folder
    bm.forget()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the Python API


def test_model_by_import_path_rebuilds_from_its_spec(mods, tmp_path):
    model = build_any(f"{bm.GOOD}:make", (1, 8, 8), 10, allow_imports=[bm.GOOD], width=12)
    assert model.spec == {"name": f"{bm.GOOD}:make", "input_shape": [1, 8, 8], "n_classes": 10,
                          "kwargs": {"width": 12}}
    save_model(tmp_path / "m.pt", model)
    again, _ = load_model(tmp_path / "m.pt", allow_imports=[bm.GOOD])
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(again(x), model.eval()(x))
    with pytest.raises(ImportNotAllowed, match=rf"m\.pt: .*pass --allow-import {bm.GOOD}"):
        load_model(tmp_path / "m.pt")
    with allowing_imports([bm.GOOD]):  # the scope the CLI sets around the specialists package
        assert load_model(tmp_path / "m.pt")[0].spec["kwargs"] == {"width": 12}


def test_a_package_allows_its_submodules():
    assert is_allowed("pkg.sub.mod", ["pkg"]) and is_allowed("pkg", ["pkg"])
    assert not is_allowed("pkgx", ["pkg"]) and not is_allowed("pkg", ["pkg.sub"])


def test_the_python_api_allows_the_module_a_model_spec_names(mods, digits, tmp_path):
    specs = [ModelSpec(f"{bm.GOOD}:make"), ModelSpec(f"{bm.GOOD}:make_wide"), ModelSpec("mlp", (8,))]
    teachers = train_ensemble(digits, specs, 4, TrainConfig(epochs=1, batch_size=256), tmp_path,
                              progress=False, vectorize=False)
    names = [t.spec["name"] for t in teachers]
    assert names == [f"{bm.GOOD}:make", f"{bm.GOOD}:make_wide", "mlp", f"{bm.GOOD}:make"]
    # resumed: the finished teachers load again (their specs name the same module)
    again = train_ensemble(digits, specs, 4, TrainConfig(epochs=1, batch_size=256), tmp_path,
                           progress=False)
    assert [t.spec for t in again] == [t.spec for t in teachers]


@pytest.mark.parametrize("factory, pattern", [
    ("raises", r"model factory 'ekd_byo_bad:raises' raised RuntimeError: no GPU here"),
    ("not_module", r"'ekd_byo_bad:not_module' returned int, not an nn.Module"),
    ("wrong_classes", r"'ekd_byo_bad:wrong_classes' gives outputs of shape \(2, 3\) .* 10 classes"),
    ("wrong_inputs", r"'ekd_byo_bad:wrong_inputs' fails on inputs of shape \(1, 8, 8\)"),
    ("nope", r"module 'ekd_byo_bad' has no attribute 'nope'"),
    ("NOT_CALLABLE", r"'ekd_byo_bad:NOT_CALLABLE' is not a function"),
])
def test_bad_factories_are_named(mods, factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_any(f"{bm.BAD}:{factory}", (1, 8, 8), 10, allow_imports=[bm.BAD])


def test_data_set_from_a_function(mods):
    with pytest.raises(ImportNotAllowed, match=rf"data set '{bm.GOOD}:data' .*--allow-import"):
        load_dataset_function(f"{bm.GOOD}:data")
    assert bm.GOOD not in sys.modules
    splits = load_dataset_function(f"{bm.GOOD}:data", allow_imports=[bm.GOOD], val_fraction=0.2)
    assert splits.input_shape == (1, 8, 8) and splits.n_classes == 10
    assert splits.class_names[3] == "digit 3" and len(splits.x_test) == 597
    assert len(splits.x_train) + len(splits.x_val) == 1200


@pytest.mark.parametrize("fn, pattern", [
    ("data_not_dict", r"returned list, expected a dict with keys X_train"),
    ("data_missing", r"missing key\(s\) X_test, y_test"),
    ("data_raises", r"raised OSError: the share is not mounted"),
    ("data_mismatch", r"X_train has shape \(10, 4\) but y_train has 9 labels"),
])
def test_bad_data_set_functions_are_named(mods, fn, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_dataset_function(f"{bm.BAD}:{fn}", allow_imports=[bm.BAD])


# ---------------------------------------------------------------- consent on the command line


@pytest.fixture(scope="module")
def marker_run(tmp_path_factory):
    """A finished run whose saved models name the marker module (which writes a file on import)."""
    folder = bm.write_modules(tmp_path_factory.mktemp("markermods"))
    run = tmp_path_factory.mktemp("marker") / "run"
    sys.path.insert(0, str(folder))
    try:
        bm.forget()
        assert main(["run", "--out", str(run), "--dataset", "digits", "--teachers", "1",
                     "--teacher-arch", f"{bm.MARKER}:make", "--student-arch", "mlp",
                     "--student-widths", "8", "--no-specialists", *FAST]) == 0
    finally:
        sys.path.remove(str(folder))
        bm.forget()
    (folder / bm.MARKER_FILE).unlink()
    return {"run": run, "mods": folder}


def test_a_run_naming_a_module_is_not_imported_without_consent(marker_run, monkeypatch, capsys,
                                                                tmp_path):
    run, folder = marker_run["run"], marker_run["mods"]
    monkeypatch.syspath_prepend(str(folder))
    before = _snapshot(run)
    for argv in (["evaluate", "--run", run, "--out", tmp_path / "ev"],
                 ["distill", "--teachers", run, "--out", tmp_path / "d", "--epochs", "1",
                  "--quiet"]):
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert f"would import and run module '{bm.MARKER}'" in err[0]
        assert f"pass --allow-import {bm.MARKER}" in err[0]
        assert not (folder / bm.MARKER_FILE).exists()
        assert bm.MARKER not in sys.modules
        assert not (tmp_path / "ev").exists() and not (tmp_path / "d").exists()
    assert _snapshot(run) == before
    try:
        assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "ev"),
                     "--allow-import", bm.MARKER, "--quiet"]) == 0
        assert (folder / bm.MARKER_FILE).exists()
        assert (tmp_path / "ev" / "summary.json").exists()
    finally:
        (folder / bm.MARKER_FILE).unlink(missing_ok=True)
        bm.forget()


def test_a_module_in_a_config_file_needs_consent(mods, tmp_path, capsys):
    toml = tmp_path / "byo.toml"
    toml.write_text(f'teacher-arch = ["{bm.GOOD}:make"]\nteacher-kwargs = {{width = 8}}\n')
    rc = main(["train-ensemble", "--config", str(toml), "--out", str(tmp_path / "out"),
               "--dataset", "digits", "--teachers", "1", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and f"pass --allow-import {bm.GOOD}" in err
    assert not (tmp_path / "out").exists() and bm.GOOD not in sys.modules


# ---------------------------------------------------------------- the "done" criterion


def test_run_evaluate_and_specialists_with_your_own_models_and_data(mods, tmp_path):
    """``run --dataset mod:data --teacher-arch mod:make mod:make_wide --student-arch mod:make_small
    --allow-import mod``, then ``evaluate`` and ``train-specialists`` on that run."""
    out = tmp_path / "run"
    toml = tmp_path / "run.toml"
    toml.write_text("teacher-kwargs = {width = 12}\n")  # an inline table, for every teacher
    argv = ["run", "--out", out, "--config", toml, "--dataset", f"{bm.GOOD}:data",
            "--teachers", "3", "--teacher-arch", f"{bm.GOOD}:make", f"{bm.GOOD}:make_wide",
            "--student-arch", f"{bm.GOOD}:make_small", "--allow-import", bm.GOOD,
            "--teacher-epochs", "2", "--epochs", "2", "--batch-size", "64", "--device", "cpu",
            "--quiet"]
    assert main([str(a) for a in argv]) == 0
    record = json.loads((out / "config.json").read_text())["config"]
    assert record["teacher_arch"] == f"{bm.GOOD}:make {bm.GOOD}:make_wide"
    assert record["teacher_kwargs"] == {"width": 12}
    assert record["dataset"] == f"{bm.GOOD}:data"
    specs = [load_model(out / "teachers" / f"teacher_{k}" / "model.pt",
                        allow_imports=[bm.GOOD])[0].spec for k in range(3)]
    assert [s["name"] for s in specs] == [f"{bm.GOOD}:make", f"{bm.GOOD}:make_wide", f"{bm.GOOD}:make"]
    assert all(s["kwargs"] == {"width": 12} for s in specs)
    student = load_model(out / "student" / "model.pt", allow_imports=[bm.GOOD])[0]
    assert student.spec["name"] == f"{bm.GOOD}:make_small"
    summary = json.loads((out / "summary.json").read_text())
    assert any(r["model"] == "distilled student" for r in summary["rows"])

    bm.forget()
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "ev"), "--allow-import",
                 bm.GOOD, "--quiet"]) == 0
    assert (tmp_path / "ev" / "summary.json").exists()
    assert main(["train-specialists", "--generalist", str(out / "student" / "model.pt"),
                 "--dataset", f"{bm.GOOD}:data", "--subsets", str(_subsets(tmp_path)),
                 "--out", str(tmp_path / "sp"), "--epochs", "1", "--device", "cpu",
                 "--quiet"]) == 0
    # resumed: the specialists (whose specs name the module too) load in the consent scope
    assert main(["train-specialists", "--generalist", str(out / "student" / "model.pt"),
                 "--dataset", f"{bm.GOOD}:data", "--subsets", str(_subsets(tmp_path)),
                 "--out", str(tmp_path / "sp"), "--epochs", "1", "--device", "cpu",
                 "--quiet", "--resume"]) == 0
    spec = load_model(tmp_path / "sp" / "specialists" / "specialist_0" / "model.pt",
                      allow_imports=[bm.GOOD])[0].spec
    assert spec["name"] == f"{bm.GOOD}:make_small" and spec["head_out"] == 3


def _subsets(folder: Path) -> Path:
    path = folder / "subsets.json"
    path.write_text(json.dumps([[3, 5], [4, 9]]))
    return path


def test_a_run_in_a_real_process_with_the_module_on_pythonpath(mods, tmp_path):
    """The command of the README, in a real ``python -m ensemble_kd`` with PYTHONPATH."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), str(mods)])}
    proc = subprocess.run(
        [sys.executable, "-m", "ensemble_kd", "run", "--dataset", f"{bm.GOOD}:data",
         "--teacher-arch", f"{bm.GOOD}:make", "--student-arch", f"{bm.GOOD}:make_small",
         "--allow-import", bm.GOOD, "--teachers", "2", "--no-specialists", "--out",
         str(tmp_path / "run"), *FAST],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert np.isfinite(json.loads((tmp_path / "run" / "summary.json").read_text())["rows"][0]["accuracy"])


def test_wrong_weights_for_an_import_path_are_a_format_error(mods, tmp_path):
    model = build_any(f"{bm.GOOD}:make", (1, 8, 8), 10, allow_imports=[bm.GOOD])
    model.spec = {**model.spec, "kwargs": {"width": 20}}
    save_model(tmp_path / "m.pt", model)
    with pytest.raises(FormatError, match="weights do not match the architecture"):
        load_model(tmp_path / "m.pt", allow_imports=[bm.GOOD])


def test_specialist_of_an_import_path_model_loads_only_when_allowed(mods, tmp_path):
    from specialists import Specialist, build_specialist, load_specialist, load_specialists
    from specialists.specialist import save_specialist

    generalist = build_any(f"{bm.GOOD}:make", (1, 8, 8), 10, allow_imports=[bm.GOOD], width=12)
    model = build_specialist(generalist, [3, 5])
    atomic_write_json(tmp_path / "subsets.json", {"subsets": [[3, 5]]})
    save_specialist(tmp_path / "specialist_0" / "model.pt", Specialist(model, [3, 5], 1.5, []))
    bm.forget()  # saving imported nothing new; loading must ask again
    with pytest.raises(ImportNotAllowed, match=f"--allow-import {bm.GOOD}"):
        load_specialist(tmp_path / "specialist_0" / "model.pt")
    assert bm.GOOD not in sys.modules
    one = load_specialist(tmp_path / "specialist_0" / "model.pt", allow_imports=[bm.GOOD])
    (both,) = load_specialists(tmp_path, allow_imports=[bm.GOOD])
    x = torch.rand(4, 1, 8, 8)
    for sp in (one, both):
        assert sp.subset == [3, 5] and sp.dustbin_correction == 1.5
        torch.testing.assert_close(sp.model(x), model.eval()(x))
