"""The command line end to end on tiny data: run, evaluate, resume, report, config files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ensemble_kd.cli import main

TINY = [
    "--dataset", "synthetic", "--synthetic-classes", "6", "--synthetic-groups", "2",
    "--synthetic-train", "600", "--teachers", "2", "--teacher-arch", "mlp",
    "--teacher-widths", "32", "--teacher-jitter", "0", "--teacher-epochs", "3", "--epochs", "3",
    "--specialist-epochs", "2", "--student-widths", "8", "--batch-size", "64", "--lr", "0.01",
    "--n-clusters", "2", "--quiet", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


def test_run_writes_the_whole_pipeline(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    names = [r["model"] for r in summary["rows"]]
    assert names[:3] == ["teacher 0", "teacher 1", "ensemble of 2"]
    assert "baseline student (hard labels)" in names and "distilled student" in names
    assert any(n.startswith("generalist + ") for n in names)
    for r in summary["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["error"] == pytest.approx(1 - r["accuracy"])
    for path in ["teachers/teacher_0/model.pt", "teachers/teacher_1/metrics.jsonl",
                 "baseline/model.pt", "student/model.pt", "student/cache/meta.json",
                 "report/report.html", "specialists/subsets.json", "summary.md", "config.json"]:
        assert (run_dir / path).is_file(), path
    lines = (run_dir / "teachers/teacher_0/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["command"] == "run" and cfg["config"]["teachers"] == 2
    spec = summary["specialists"]
    assert spec["n_covered"] >= 0 and "by_coverage" in spec


def test_evaluate_reproduces_the_run_numbers(run_dir, tmp_path, capsys):
    before = json.loads((run_dir / "summary.json").read_text())["rows"]
    assert main(["evaluate", "--run", str(run_dir), "--out", str(tmp_path), "--quiet"]) == 0
    after = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [r["model"] for r in after] == [r["model"] for r in before]
    for a, b in zip(after, before, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"])
    assert "distilled student" in capsys.readouterr().out


def test_resume_of_a_finished_run_retrains_nothing(run_dir):
    model = run_dir / "student" / "model.pt"
    stamp = model.stat().st_mtime_ns
    assert main(["run", "--out", str(run_dir), "--resume", *TINY]) == 0
    assert model.stat().st_mtime_ns == stamp


def test_existing_run_is_refused_without_resume(run_dir, capsys):
    assert main(["run", "--out", str(run_dir), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0]


def test_confusion_report_of_a_saved_model(run_dir, tmp_path):
    out = tmp_path / "rep"
    args = ["confusion-report", "--model", str(run_dir / "student" / "model.pt"), "--out", str(out)]
    assert main([*args, *TINY[:8], "--quiet", "--device", "cpu"]) == 0
    html = (out / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64" in html


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("teachers = 1\nteacher-epochs = 1\nepochs = 1\nteacher_widths = [8]\n")
    out = tmp_path / "ens"
    args = ["train-ensemble", "--config", str(cfg), "--out", str(out), "--teachers", "2",
            *TINY[:8], "--teacher-arch", "mlp", "--teacher-jitter", "0", "--quiet"]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["teachers"] == 2 and saved["epochs"] == 1 and saved["teacher_widths"] == [8]
    assert sorted(p.name for p in (out / "teachers").iterdir()) == ["teacher_0", "teacher_1"]


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "ensemble_kd", "run", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for flag in ("--temperature", "--alpha", "--combine", "--config", "--resume", "--device"):
        assert flag in r.stdout


def test_main_job_seeds_distils_saved_teachers_per_seed(run_dir, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "seeds"
    data = TINY[:8]  # the data set only: distill takes the teachers from run_dir
    cmd = [sys.executable, str(root / "scripts" / "main_job_seeds.py"), "--out", str(out),
           "--seeds", "3", "--teachers", str(run_dir), "--", *data, "--student-widths", "8",
           "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--temperature", "2",
           "--alpha", "0.9", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads((out / "seed_3" / "config.json").read_text())
    assert saved["command"] == "distill" and saved["config"]["seed"] == 3
    summary = json.loads((out / "seed_3" / "summary.json").read_text())
    table = (out / "seeds.md").read_text()
    assert "--teachers " + str(run_dir) in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("| 3 |"))
    assert f"{100 * summary['distilled_accuracy']:.2f}%" in row
    assert f"{100 * summary['baseline_accuracy']:.2f}%" in row
