"""The CLI's view flags: recorded, seen alike by the baseline and the student, bad values refused."""

from __future__ import annotations

import json

import pytest

from ensemble_kd.cli import main

COMMON = ["run", "--no-specialists", "--teachers", "1", "--teacher-arch", "mlp", "--teacher-widths",
          "8", "--teacher-epochs", "1", "--student-widths", "4", "--epochs", "1", "--temperature",
          "2", "--alpha", "0.9", "--quiet"]


def test_views_are_recorded_and_both_students_see_them(tmp_path):
    out = tmp_path / "v"
    assert main([*COMMON, "--out", str(out), "--view-shift", "1", "--view-mixup", "0.5",
                 "--views", "3"]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["view_shift"], cfg["view_mixup"], cfg["views"]) == (1, 0.5, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert "views shift=1, mixup=0.5, views=3" in summary["inputs_seen"]
    # the baseline's run identity carries the same views as the student's: same inputs
    base = (out / "baseline" / "checkpoint.pt")
    import torch
    ident = json.loads(torch.load(base, weights_only=True)["identity"])
    assert ident["extra"]["views"]["shift"] == 1 and ident["extra"]["views"]["mixup"] == 0.5
    cache = json.loads((out / "student" / "cache" / "meta.json").read_text())
    assert cache["shape"][1] == 3 * 1213  # V = 3 views of every transfer example


@pytest.mark.parametrize("flags,msg", [
    (["--dataset", "synthetic", "--synthetic-classes", "4", "--synthetic-groups", "2",
      "--view-crop-padding", "2"], "crop"),
    (["--view-mixup", "-1"], "mixup"),
    (["--views", "0"], "unbounded views"),
])
def test_bad_view_flags_are_one_line_and_write_nothing(tmp_path, capsys, flags, msg):
    out = tmp_path / "bad"
    assert main([*COMMON, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert not out.exists()
