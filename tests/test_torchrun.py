"""Two processes under torchrun (gloo, loopback): teachers and specialists shared out across ranks,
the student trained with DistributedDataParallel, results readable by the single-process commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ensemble_kd.checkpoint import load_model
from ensemble_kd.cli import main

TINY = [
    "--dataset", "synthetic", "--synthetic-classes", "6", "--synthetic-groups", "2",
    "--synthetic-train", "600", "--teachers", "3", "--teacher-widths", "32",
    "--teacher-epochs", "2", "--epochs", "2", "--specialist-epochs", "2", "--student-widths", "8",
    "--batch-size", "64", "--n-clusters", "2", "--temperature", "4", "--alpha", "0.5", "--quiet",
    "--device", "cpu",
]  # fmt: skip


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    torchrun_bin = shutil.which("torchrun")
    cmd = [torchrun_bin] if torchrun_bin else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(
        [*cmd, "--standalone", "--nproc_per_node=2", "-m", "ensemble_kd", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = torchrun("run", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_every_teacher_and_specialist_trained_once(ddp_run):
    out, _ = ddp_run
    for k in range(3):
        lines = (out / "teachers" / f"teacher_{k}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # one writer, each epoch once
    subsets = json.loads((out / "specialists" / "subsets.json").read_text())["subsets"]
    assert len(subsets) == 2
    for m in range(2):
        lines = (out / "specialists" / f"specialist_{m}" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2


def test_table_printed_once(ddp_run):
    _, r = ddp_run
    assert r.stdout.count("| distilled student") == 1


def test_ddp_student_matches_a_single_process_run(ddp_run, tmp_path):
    """DDP with 2 equal shards of each 64-example batch = the same full-batch gradient steps."""
    out, _ = ddp_run
    single = tmp_path / "single"
    shutil.copytree(out / "teachers", single / "teachers")
    distill_args = [*TINY[:8], "--epochs", "2", "--student-widths", "8", "--batch-size", "64",
                    "--temperature", "4", "--alpha", "0.5", "--quiet", "--device", "cpu"]
    assert main(["distill", "--teachers", str(single), "--out", str(tmp_path / "d"),
                 *distill_args]) == 0
    ddp_student, _ = load_model(out / "student" / "model.pt")
    one_student, _ = load_model(tmp_path / "d" / "student" / "model.pt")
    for (name, a), b in zip(ddp_student.state_dict().items(), one_student.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_ddp_results_readable_by_single_process_evaluate(ddp_run, tmp_path):
    out, _ = ddp_run
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path), "--quiet"]) == 0
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    before = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["accuracy"] for r in rows] == pytest.approx([r["accuracy"] for r in before])


def test_a_last_batch_smaller_than_the_ranks_gives_no_nan(tmp_path):
    """540 training examples in batches of 7: the last batch holds 1 example for 2 ranks; the step
    is skipped on every rank instead of giving one rank an empty shard (a NaN mean loss)."""
    out = tmp_path / "run"
    args = [*TINY[:8], "--teachers", "1", "--teacher-widths", "8", "--teacher-epochs", "1",
            "--epochs", "2", "--student-widths", "8", "--batch-size", "7", "--no-specialists",
            "--temperature", "4", "--alpha", "0.9", "--quiet", "--device", "cpu"]
    r = torchrun("run", "--out", str(out), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "diverged" not in r.stderr
    for model in ("baseline", "student"):
        for line in (out / model / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            assert all(v == v for v in record.values() if isinstance(v, float)), record
    summary = json.loads((out / "summary.json").read_text())
    assert all(row["nll"] == row["nll"] for row in summary["rows"])
