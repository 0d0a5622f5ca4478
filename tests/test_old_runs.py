"""Run folders written by ensemble-kd 0.1.0 still evaluate and resume (tests/fixtures/run_v0_1_0).

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
