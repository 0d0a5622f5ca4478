"""Run folders written by ensemble-kd 0.1.0 still evaluate and resume (tests/fixtures/run_v0_1_0);
a run record (config.json) of a newer format is refused.

The fixture's README.md says how the runs were made; the command below is that command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ensemble_kd.checkpoint import load_model
from ensemble_kd.cli import main
from ensemble_kd.cli.config import RunConfig
from ensemble_kd.cli.run_record import FORMAT, FORMAT_VERSION, prepare_out, read_run_record

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1_0"
COMMAND = [
    "run", "--teachers", "2", "--teacher-arch", "mlp", "--teacher-widths", "16",
    "--teacher-epochs", "3", "--student-widths", "8", "--epochs", "3", "--specialist-epochs", "2",
    "--quiet",
]  # fmt: skip


def _accuracies(summary: Path) -> dict[str, float]:
    return {r["model"]: r["accuracy"] for r in json.loads(summary.read_text())["rows"]}


def test_a_complete_old_run_evaluates_to_its_recorded_numbers(tmp_path, capsys):
    run = shutil.copytree(FIXTURE / "complete", tmp_path / "run")
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--quiet"]) == 0
    recorded = _accuracies(FIXTURE / "complete" / "summary.json")
    now = _accuracies(out / "summary.json")
    assert list(now) == list(recorded)
    for name, acc in recorded.items():
        assert now[name] == pytest.approx(acc, abs=1e-12), name
    assert "generalist + 3 specialists" in capsys.readouterr().out


def test_an_interrupted_old_run_resumes_to_the_uninterrupted_result(tmp_path):
    torch.set_num_threads(1)  # the fixture was made with one thread
    run = shutil.copytree(FIXTURE / "interrupted", tmp_path / "run")
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 0
    assert (run / "summary.json").is_file()
    assert "generalist + " in " ".join(_accuracies(run / "summary.json"))
    resumed = load_model(run / "baseline" / "model.pt")[0].state_dict()
    reference = load_model(FIXTURE / "baseline_reference_model.pt")[0].state_dict()
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.allclose(resumed[k], reference[k], atol=1e-6, rtol=0), k


def test_run_records_carry_a_format_version_and_old_ones_read_as_version_1(tmp_path):
    old = read_run_record(FIXTURE / "complete" / "config.json")  # 0.1.0: no format key
    assert old["command"] == "run" and old["config"]["teachers"] == 2
    assert old["format"] == FORMAT and old["format_version"] == FORMAT_VERSION
    out = tmp_path / "new"
    cfg = RunConfig(**old["config"])
    prepare_out(out, cfg, "run", resume=False, overwrite=False)
    new = json.loads((out / "config.json").read_text())
    assert new["format"] == FORMAT and new["format_version"] == FORMAT_VERSION == 2
    assert read_run_record(out / "config.json")["config"] == old["config"]


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_run_record_of_a_newer_format_is_refused_in_one_line(tmp_path, capsys, command):
    run = shutil.copytree(FIXTURE / "complete", tmp_path / "run")
    record = json.loads((run / "config.json").read_text())
    record.update(format=FORMAT, format_version=FORMAT_VERSION + 1)
    (run / "config.json").write_text(json.dumps(record))
    argv = (["evaluate", "--run", str(run), "--out", str(tmp_path / "eval"), "--quiet"]
            if command == "evaluate" else [*COMMAND, "--out", str(run), "--resume"])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "upgrade ensemble-kd" in err[0] and "format version 3" in err[0], err
    assert not (tmp_path / "eval").exists()
