"""The command line does what it says (issue 12, item 10): typed flags win in ``evaluate``, which
never overwrites the run's own summary; ``confusion-report`` refuses a folder of another run;
a foreign pickle is refused in our words; the --teacher-epochs help states its real default."""

from __future__ import annotations

import fractions
import json
from pathlib import Path

import pytest
import torch

from ensemble_kd.cli import main
from ensemble_kd.cli.commands import saved_settings
from ensemble_kd.cli.parser import COMMANDS, build_parser, given_fields, resolve_config
from ensemble_kd.io import atomic_write_json

DATA = ["--dataset", "digits", "--device", "cpu", "--quiet"]
TEACHERS = ["--teachers", "1", "--teacher-arch", "mlp", "--teacher-widths", "8",
            "--teacher-jitter", "0", "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "64"]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixes") / "run"
    assert main(["train-ensemble", "--out", str(out), *DATA, *TEACHERS]) == 0
    return out


def _one_line_error(capsys, argv) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def _evaluate_cfg(tmp_path: Path, argv: list[str], saved: dict):
    atomic_write_json(tmp_path / "config.json", {"command": "run", "config": saved})
    args = build_parser().parse_args(["evaluate", "--run", str(tmp_path), *argv])
    groups = COMMANDS["evaluate"][1]
    return saved_settings(resolve_config(args, groups), tmp_path, given_fields(args, groups))


def test_a_typed_flag_equal_to_the_default_wins(tmp_path):
    cfg = _evaluate_cfg(tmp_path, ["--top-n", "1", "--dataset", "digits"],
                        {"top_n": 2, "dataset": "synthetic", "n_clusters": 3})
    assert cfg.top_n == 1 and cfg.dataset == "digits"
    assert cfg.n_clusters == 3  # not typed: the run's own


def test_settings_not_typed_come_from_the_run(tmp_path):
    cfg = _evaluate_cfg(tmp_path, [], {"top_n": 2, "dataset": "synthetic"})
    assert cfg.top_n == 2 and cfg.dataset == "synthetic"


def test_a_config_file_key_counts_as_typed(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("top_n = 1\n")
    cfg = _evaluate_cfg(tmp_path, ["--config", str(toml)], {"top_n": 2})
    assert cfg.top_n == 1


def test_evaluate_without_out_writes_beside_the_summary(ensemble_run, capsys):
    summary = ensemble_run / "summary.json"
    before = summary.read_bytes()
    assert main(["evaluate", "--run", str(ensemble_run), *DATA]) == 0
    assert summary.read_bytes() == before
    rows = json.loads((ensemble_run / "evaluate.json").read_text())["rows"]
    assert rows[0]["model"] == "teacher 0"
    assert (ensemble_run / "evaluate.md").is_file()


def test_evaluate_help_says_where_it_writes():
    text = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "evaluate.json" in text and "left as it is" in " ".join(text.split())


def test_confusion_report_refuses_a_folder_of_another_run(ensemble_run, capsys):
    before = sorted(p.name for p in ensemble_run.iterdir())
    model = ensemble_run / "teachers" / "teacher_0" / "model.pt"
    line = _one_line_error(capsys, ["confusion-report", "--model", model, "--out", ensemble_run,
                                    *DATA])
    assert "already holds a run" in line and "--overwrite" in line
    assert sorted(p.name for p in ensemble_run.iterdir()) == before


def test_confusion_report_twice_needs_overwrite(ensemble_run, tmp_path, capsys):
    model = ensemble_run / "teachers" / "teacher_0" / "model.pt"
    argv = ["confusion-report", "--model", str(model), "--out", str(tmp_path / "rep"), *DATA]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "rep" / "config.json").read_text())
    assert saved["command"] == "confusion-report"
    assert "already holds a run" in _one_line_error(capsys, argv)
    assert main([*argv, "--overwrite"]) == 0


def test_teacher_epochs_help_states_its_default():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "teachers do not follow --epochs; auto: 15 for cnn teachers, else 30 (default auto)" in text


def _foreign_pickle(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": fractions.Fraction(1, 3)}, path)  # a class weights_only refuses


@pytest.mark.parametrize("command", ["evaluate", "distill"])
def test_a_foreign_pickle_is_refused_without_unsafe_advice(tmp_path, capsys, command):
    _foreign_pickle(tmp_path / "run" / "teachers" / "teacher_0" / "model.pt")
    argv = (["evaluate", "--run", tmp_path / "run"] if command == "evaluate" else
            ["distill", "--teachers", tmp_path / "run", "--out", tmp_path / "out", "--epochs", "1"])
    line = _one_line_error(capsys, [*argv, *DATA])
    assert "model.pt" in line
    assert "weights_only" not in line
    assert not (tmp_path / "out").exists()
