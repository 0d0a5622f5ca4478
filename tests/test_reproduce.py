"""Smoke test of scripts/reproduce_paper.py on the tiny preset (digits), plus its pure helpers.

The tiny preset runs E1-E6 through the same code path as the full run (every model through the
shared training loop), in seconds. Resuming is pinned by rerunning into the same folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from paper import report as rep  # noqa: E402
from paper.common import Context, gap_share_ci, late_change, share_of_gap, summary  # noqa: E402
from paper.e2_omitted import choose_bias, class_counts  # noqa: E402
from paper.e5_specialists import _pooled_coverage  # noqa: E402
from paper.e6_merged import _result as e6_result  # noqa: E402
from paper.presets import TINY  # noqa: E402
from paper.runner import main, parse_args, restore  # noqa: E402

HEADLINE_KEYS = ("e1_gap_closed", "e3_ensemble_gain_kept", "e4_gap_recovered",
                 "e5_relative_gain", "e2_omitted_class_recall_after_bias")
NEW_KEYS = ("e3_ensemble_gain", "e3_kept_ci", "e1_agreement", "e5_relative_error_reduction",
            "e5_relative_error_reduction_ci", "e1_gap_closed_ci", "e6_specialist_gain_kept")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One complete tiny run and its log."""
    out = tmp_path_factory.mktemp("tiny")
    log = io.StringIO()
    data = main(["--preset", "tiny", "--out", str(out), "--device", "cpu"], log=log)
    return out, data, log.getvalue()


def test_tiny_run_writes_the_report(tiny_run):
    out, data, log = tiny_run
    folder = out / "report"
    for name in ("report.md", "report.html", "results.json", "e1_accuracy_vs_temperature.png",
                 "e2_bias.png", "e3_ensemble.png", "e4_regulariser.png", "training_curves.png"):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / "results.json").read_text())
    assert saved["complete"] is True and saved["quick"] is True
    assert saved["wall_seconds"] > 0
    for key in HEADLINE_KEYS + NEW_KEYS:
        assert key in saved, key
    assert set(saved["experiments"]) == {"E1", "E2", "E3", "E4", "E5", "E6"}
    # the headlines are the experiments' own numbers
    e1, e3, e4, e5 = (saved["experiments"][e] for e in ("E1", "E3", "E4", "E5"))
    assert saved["e3_ensemble_gain_kept"] == e3["headline_gain_kept"]
    assert saved["e3_ensemble_gain"] == pytest.approx(
        e3["ensemble"]["test_acc"] - e3["single"]["test_acc"]["mean"])
    assert saved["e2_omitted_class_recall_after_bias"] == pytest.approx(
        saved["experiments"]["E2"]["classes"][0]["after"]["recall"]["mean"])
    assert saved["e5_relative_error_reduction"] == e5["pooled_relative_error_reduction"]
    for key in ("e3_kept_ci", "e5_relative_error_reduction_ci", "e4_gap_recovered_ci"):
        low, high = saved[key]
        assert low <= high, key
    # E1: the paper's set-up first, both recipes measured over every seed, fair baselines
    assert [row["name"] for row in e1["rows"]] == ["mlp", "cnn"]
    row = e1["rows"][0]
    assert len(row["teacher_candidates"]) == 2
    assert row["teacher"]["val_acc"] == max(c["val_acc"] for c in row["teacher_candidates"])
    assert set(row["sweeps"]) == {"paper", "shift1", "mixup"}
    assert [c["temperature"] for c in row["sweeps"]["paper"]] == [1.0, 4.0]
    assert set(row["recipes"]) == {"paper", row["best_view_recipe"]}
    for rec in row["recipes"].values():
        assert rec["test_acc"]["n"] == TINY.e1_seeds
    assert row["recipes"][row["best_view_recipe"]]["fair_baseline"]["test_acc"]["n"] == 2
    assert saved["e1_agreement"] == row["chosen"]["agreement"]["mean"]
    assert (saved["e1_gap_closed"] is None) == (not row["teacher_clearly_better"])
    assert len(e3["members"]) == TINY.e3_teachers
    # E3 has its own ensemble (a cnn in the tiny and full presets); E4-E6 share the MLP members
    assert e3["arch"] == TINY.e3_arch == "cnn"
    assert sorted(p.name for p in (out / "members").iterdir() if p.is_dir()) == [
        f"member_{k}" for k in range(TINY.members_count)]
    assert sorted(p.name for p in (out / "e3" / "members").iterdir() if p.is_dir()) == [
        f"member_{k}" for k in range(TINY.e3_teachers)]
    assert len(e4["full_data"]["test_acc"]["values"]) == TINY.members_count
    assert e3["distilled"]["test_acc"]["n"] == TINY.e3_seeds
    # students longer than the members: the students' curves and a control of their budget
    assert e3["student_epochs"] == TINY.e3_student_epochs > TINY.e3_epochs
    assert [len(c) for c in e3["student_curves"]] == [TINY.e3_student_epochs] * TINY.e3_seeds
    assert len(e3["control_curve"]) == TINY.e3_student_epochs
    assert 0 < e3["control"]["test_acc"] <= 1
    # the share measured from the control: larger than from the members' mean exactly when the
    # control is the weaker baseline (with the student short of the ensemble)
    ens, member, student = (e3["ensemble"]["test_acc"], e3["single"]["test_acc"]["mean"],
                            e3["distilled"]["test_acc"]["mean"])
    if e3["control_gain_kept"] is not None and member < student < ens:
        assert (e3["control_gain_kept"] > e3["headline_gain_kept"]) == (
            e3["control"]["test_acc"] < member)
    control = out / "e3" / f"students_e{TINY.e3_student_epochs}" / "control"
    assert json.loads((control / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] \
        == TINY.e3_student_epochs
    assert set(e4["rows"]) == {"hard", "hard_views", "paper", "views"}
    # E6: every E5 generalist with specialists merged; the headline is a share or None with why
    e6 = saved["experiments"]["E6"]
    assert saved["e6_specialist_gain_kept"] == e6["headline_gain_kept"]
    assert saved["e6_specialist_gain_kept_ci"] == e6["gain_kept_ci"]
    merged = [g for g in e6["generalists"] if "merged_acc" in g]
    assert [g["generalist"] for g in merged] == [r["generalist"] for r in e5["runs"]
                                                 if r["subsets"]]
    assert merged, "digits' tiny run has specialists (from the expected confusion)"
    for g in merged:  # same test set, same generalist as E5
        run5 = next(r for r in e5["runs"] if r["generalist"] == g["generalist"])
        assert g["generalist_acc"] == run5["generalist_acc"]
        assert g["combined_acc"] == pytest.approx(run5["combined_acc"])
        assert g["systems"]["merged"]["params"] == g["systems"]["generalist"]["params"]
    pooled = e6["pooled"]
    if pooled["combined_gain"] > 0:
        assert e6["headline_gain_kept"] == pytest.approx(
            (pooled["merged_acc"] - pooled["control_acc"]) / pooled["combined_gain"])
        low, high = e6["gain_kept_ci"]
        assert low <= e6["headline_gain_kept"] <= high
    else:
        assert e6["headline_gain_kept"] is None and "gain nothing" in e6["note"]
    # stage lines: each experiment starts and ends, units are counted
    for exp in ("E1", "E2", "E3", "E4", "E5", "E6"):
        assert f"{exp}: start" in log and f"{exp}: saved" in log
    assert "E1 [21/21]" in log


def test_report_is_self_contained_and_compares_with_the_paper(tiny_run):
    out, _, _ = tiny_run
    html_text = (out / "report" / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html_text)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html_text and "<script" not in html_text
    md = (out / "report" / "report.md").read_text()
    assert "| teacher | 67 |" in md  # paper's E1 teacher beside ours
    assert "86%" in md and "87%" in md  # E3 and E4 ratios of the paper
    assert "Not run yet" not in md and "E6. Specialists distilled back into one model" in md
    assert "What stood in the way (measured):" in md and "95% interval" in md


def test_rerun_loads_everything_and_an_interrupted_unit_resumes(tiny_run):
    out, data, _ = tiny_run
    log = io.StringIO()
    again = main(["--preset", "tiny", "--out", str(out), "--device", "cpu"], log=log)
    assert "training" not in log.getvalue()
    assert all(f"{e}: already done" in log.getvalue()
               for e in ("E1", "E2", "E3", "E4", "E5", "E6"))
    for key in HEADLINE_KEYS:
        assert again[key] == data[key]
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 2

    # Lose E1's result and one student, as if killed while training it: only that one retrains,
    # and (seeded, CPU) it comes out the same, so E1's numbers do not move.
    (out / "e1" / "result.json").unlink()
    (student,) = (out / "e1" / "mlp").glob("from_*/paper/seed_1/model.pt")  # keyed by teacher
    student.unlink()
    log = io.StringIO()
    third = main(["--preset", "tiny", "--out", str(out), "--device", "cpu", "--only", "E1"],
                 log=log)
    trained = [ln for ln in log.getvalue().splitlines() if "distilling" in ln or
               "training on" in ln]
    assert len(trained) == 1 and "mlp: student 32, paper, seed 1" in trained[0]
    assert third["experiments"]["E1"] == data["experiments"]["E1"]


def test_a_lost_run_folder_is_restored_from_its_report(tiny_run, digits, tmp_path):
    out = tiny_run[0]
    saved = out / "report" / "results.json"
    data = json.loads(saved.read_text())  # as it is now (other tests rerun parts of the run)
    ctx = Context(tmp_path / "again", TINY, digits, device="cpu", log=io.StringIO())
    put = restore(ctx, saved, skip={"E1"})  # E1 is to be run again
    assert sorted(put) == ["E2", "E3", "E4", "E5", "E6"]
    assert ctx.load_result("E1") is None
    assert ctx.load_result("E3") == data["experiments"]["E3"]  # as the runner saved it
    commands = [i["command"] for i in ctx.run["invocations"] if "restored_from" in i]
    assert commands == data["meta"]["commands"] and commands
    assert ctx.wall_seconds() >= data["meta"]["wall_seconds"] > 0
    # a second restore finds everything there and records nothing twice
    assert restore(ctx, saved, skip={"E1"}) == []
    assert len([i for i in ctx.run["invocations"] if "restored_from" in i]) == len(commands)

    with pytest.raises(SystemExit, match="not a report's results.json"):
        restore(ctx, out / "run.json", skip=set())
    quick = Context(tmp_path / "quick", dataclasses.replace(TINY, name="quick"), digits,
                    device="cpu", log=io.StringIO())
    with pytest.raises(SystemExit, match="preset 'tiny', this run: 'quick'"):
        restore(quick, saved, skip=set())
    assert not (tmp_path / "quick" / "e3").exists()


def test_e6_resumes_from_its_folder(tiny_run):
    out, data, _ = tiny_run
    # E6's result lost: its merged model and control are loaded, not retrained
    (out / "e6" / "result.json").unlink()
    log = io.StringIO()
    again = main(["--preset", "tiny", "--out", str(out), "--device", "cpu", "--only", "E6"],
                 log=log)
    assert "training" not in log.getvalue() and "distilling" not in log.getvalue()
    assert "merged model and control already trained, loading" in log.getvalue()
    assert again["experiments"]["E6"] == data["experiments"]["E6"]
    # the merged model lost as if killed: only it is trained again, from the cached q, and
    # (seeded, CPU) it comes out the same
    (out / "e6" / "result.json").unlink()
    (out / "e6" / "generalist_0" / "model" / "model.pt").unlink()
    log = io.StringIO()
    third = main(["--preset", "tiny", "--out", str(out), "--device", "cpu", "--only", "E6"],
                 log=log)
    text = log.getvalue()
    assert "distilling q" in text and "computing q" not in text
    assert "training the control" not in text
    assert third["experiments"]["E6"] == data["experiments"]["E6"]


def test_e6_needs_e5(tmp_path, digits):
    from paper import e6_merged

    ctx = Context(tmp_path, TINY, digits, device="cpu", log=io.StringIO())
    with pytest.raises(ValueError, match="run E5 first"):
        e6_merged.run(ctx)
    assert not (tmp_path / "e6").exists()  # refused before anything is written


def test_e6_headline_is_none_with_the_reason_when_there_is_no_gain():
    ctx = SimpleNamespace(preset=TINY, say=lambda _m: None)
    # no generalist with specialists (E5's weak-signal rule)
    entries = [{"generalist": 0, "subsets": [], "subset_names": [],
                "note": "no specialists: too little confusion"}]
    r = e6_result(ctx, entries, [])
    assert r["headline_gain_kept"] is None and r["gain_kept_ci"] is None
    assert "nothing to merge" in r["note"] and "too little confusion" in r["note"]
    # specialists that gain nothing over the control: no share of a gain
    rng = np.random.default_rng(0)
    control = rng.random(200) < 0.8
    ok = np.stack([control, control, control, ~control])  # generalist, control, combined, merged
    r = e6_result(ctx, [{"generalist": 0}], [ok])
    assert r["headline_gain_kept"] is None and "gain nothing over the control" in r["note"]
    assert r["pooled"]["combined_gain"] == 0.0
    # pooled over two generalists: correct counts summed
    a = np.stack([control, control, control | (rng.random(200) < 0.5), control]).astype(bool)
    b = a.copy()
    b[3] = a[2]  # the second merged model keeps all of its gain, the first none
    r = e6_result(ctx, [{"generalist": 0}, {"generalist": 1}], [a, b])
    assert r["headline_gain_kept"] == pytest.approx(0.5)
    low, high = r["gain_kept_ci"]
    assert low < 0.5 < high


def test_a_folder_refuses_other_settings(tiny_run, digits):
    out, _, _ = tiny_run
    with pytest.raises(ValueError, match="another preset"):
        Context(out, dataclasses.replace(TINY, name="quick"), digits, device="cpu",
                log=io.StringIO())
    # E1's models were trained at other temperatures: refused; E3's are still fine
    ctx = Context(out, dataclasses.replace(TINY, e1_temperatures=(3.0,)), digits, device="cpu",
                  log=io.StringIO())
    with pytest.raises(ValueError, match=r"e1 was made with other settings \(e1_temperatures\)"):
        ctx.claim("e1", ("e1_",))
    ctx.claim("e3", ("e3_",))


def test_more_seeds_keep_the_models_trained_so_far(tiny_run, digits):
    out, _, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (out / "e1").rglob("model.pt")}
    ctx = Context(out, dataclasses.replace(TINY, e1_seeds=TINY.e1_seeds + 1), digits,
                  device="cpu", log=io.StringIO())
    ctx.claim("e1", ("e1_",))  # a count: accepted, and recorded
    assert json.loads((out / "e1" / "settings.json").read_text())["e1_seeds"] == TINY.e1_seeds + 1
    assert before and {p: p.stat().st_mtime_ns for p in before} == before


def test_a_setting_added_later_is_accepted_and_recorded(tmp_path, digits):
    ctx = Context(tmp_path, TINY, digits, device="cpu", log=io.StringIO())
    ctx.claim("e3", ("e3_",))
    path = tmp_path / "e3" / "settings.json"
    old = json.loads(path.read_text())
    del old["e3_member_views"]  # as written before that setting existed
    path.write_text(json.dumps(old))
    ctx.claim("e3", ("e3_",))
    assert json.loads(path.read_text())["e3_member_views"] == TINY.e3_member_views


def _wait_for_program(pid: int, text: bytes, timeout: float = 30.0) -> None:
    """Wait until the command line of process ``pid`` holds ``text``: between fork and exec it is
    still the parent's (or empty), which made the ownership check below flaky on a busy machine."""
    path = Path(f"/proc/{pid}/cmdline")
    if not path.exists():
        return  # not Linux: nothing to wait for
    deadline = time.monotonic() + timeout
    while text not in path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_new_teacher_candidate_keeps_e1s_models(tmp_path, digits):
    """Adding a teacher candidate to an E1 row only adds models (folders are named after the
    teacher): accepted and recorded. Changing or dropping one is refused."""
    from paper.presets import TeacherRecipe

    Context(tmp_path, TINY, digits, device="cpu", log=io.StringIO()).claim("e1", ("e1_",))
    saved = json.loads((tmp_path / "e1" / "settings.json").read_text())
    for t in saved["e1_rows"][0]["teachers"]:  # as written before recipes had a mixup field
        t.pop("mixup")
    (tmp_path / "e1" / "settings.json").write_text(json.dumps(saved))
    first, *rest = TINY.e1_rows
    extra = TeacherRecipe("mlp", (64, 64), 0.2, 1, 6, 3e-3, mixup=0.2)
    more = dataclasses.replace(TINY, e1_rows=(
        dataclasses.replace(first, teachers=(*first.teachers, extra)), *rest))
    Context(tmp_path, more, digits, device="cpu", log=io.StringIO()).claim("e1", ("e1_",))
    rows = json.loads((tmp_path / "e1" / "settings.json").read_text())["e1_rows"]
    assert rows[0]["teachers"][-1]["mixup"] == 0.2  # recorded
    assert extra.name.endswith("_m0.2_e6") and "_m" not in first.teachers[0].name
    changed = dataclasses.replace(first.teachers[0], epochs=7)
    for teachers in ((extra,), (changed, *first.teachers[1:], extra)):
        other = dataclasses.replace(TINY, e1_rows=(
            dataclasses.replace(first, teachers=teachers), *rest))
        with pytest.raises(ValueError, match="other settings"):
            Context(tmp_path, other, digits, device="cpu", log=io.StringIO()).claim(
                "e1", ("e1_",))


def test_a_folder_in_use_by_another_process_is_refused(tmp_path, digits):
    ctx = Context(tmp_path, TINY, digits, device="cpu", log=io.StringIO())
    (tmp_path / "e1").mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _wait_for_program(other.pid, b"time.sleep(60)")  # its own command line: exec is done
    try:  # alive: another Python process
        (tmp_path / "e1" / "owner.pid").write_text(f"{other.pid}\n")
        with pytest.raises(ValueError, match="in use by another running process"):
            ctx.claim("e1", ("e1_",))
        # a reader of finished models there (E2 loading E1's teacher) is let in, settings
        # checked, and leaves the owner's lock alone
        ctx.claim("e1", ("e1_",), lock=False)
        assert (tmp_path / "e1" / "owner.pid").read_text().strip() == str(other.pid)
        other_settings = dataclasses.replace(TINY, e1_student_epochs=TINY.e1_student_epochs + 1)
        reader = Context(tmp_path, other_settings, digits, device="cpu", log=io.StringIO())
        with pytest.raises(ValueError, match="made with other settings"):
            reader.claim("e1", ("e1_",), lock=False)
    finally:
        other.kill()
        other.wait()
    if Path("/proc/self/cmdline").exists():  # Linux: a live process that is not Python is stale
        shell = subprocess.Popen(["sleep", "60"])
        _wait_for_program(shell.pid, b"sleep")
        try:
            (tmp_path / "e1" / "owner.pid").write_text(f"{shell.pid}\n")
            ctx.claim("e1", ("e1_",))
        finally:
            shell.kill()
            shell.wait()
    (tmp_path / "e1" / "owner.pid").write_text("999999999\n")  # no such process: stale
    ctx.claim("e1", ("e1_",))
    assert (tmp_path / "e1" / "owner.pid").read_text().strip() == str(os.getpid())


def test_a_unit_is_held_by_one_live_process_at_a_time(tmp_path, digits):
    ctx = Context(tmp_path, TINY, digits, device="cpu", log=io.StringIO())
    unit = tmp_path / "e1" / "unit"
    assert ctx._hold_unit(unit) is None  # free: now this process's
    assert ctx._hold_unit(unit) is None  # its own mark
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _wait_for_program(other.pid, b"time.sleep(60)")
    try:
        (unit / "owner.pid").write_text(f"{other.pid}\n")
        assert ctx._hold_unit(unit) == other.pid  # a live holder keeps it
        assert (unit / "owner.pid").read_text().strip() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    assert ctx._hold_unit(unit) is None  # its holder died: taken over
    assert (unit / "owner.pid").read_text().strip() == str(os.getpid())
    assert sorted(p.name for p in unit.iterdir()) == ["owner.pid"]  # no temporary marks left


def test_a_unit_trained_by_another_invocation_is_waited_for_and_loaded(tmp_path, digits,
                                                                      monkeypatch):
    """The main invocation reaching a model a --helper is training waits, then loads it."""
    import threading

    from paper import common

    from ensemble_kd import ModelSpec
    from ensemble_kd.ensemble import data_meta
    from ensemble_kd.run import Run

    monkeypatch.setattr(common, "UNIT_POLL_S", 0.05)

    def no_training(*a, **k):
        raise AssertionError("trained a unit another invocation was training")

    monkeypatch.setattr(common, "train_baseline", no_training)
    log = io.StringIO()
    ctx = Context(tmp_path, TINY, digits, device="cpu", log=log)
    unit, spec = tmp_path / "e1" / "unit", ModelSpec("mlp", (8,), 0.0)
    theirs = spec.build(digits.input_shape, digits.n_classes)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _wait_for_program(other.pid, b"time.sleep(60)")
    unit.mkdir(parents=True)
    (unit / "owner.pid").write_text(f"{other.pid}\n")

    def the_other_finishes():
        time.sleep(0.5)
        Run(unit).finish(theirs, {**data_meta(digits), "role": "hard", "seed": 0})
        other.kill()
        other.wait()

    finisher = threading.Thread(target=the_other_finishes)
    finisher.start()
    try:
        got = ctx.hard_model(unit, spec, 0, 1, label="unit")
    finally:
        finisher.join()
    assert "being made by another invocation" in log.getvalue()
    assert "already trained, loaded" in log.getvalue()
    for a, b in zip(got.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not (unit / "owner.pid").exists()  # released


def test_a_sweep_of_units_trains_what_distill_sweep_trains(tmp_path, digits):
    """The runner trains a sweep's candidates as units of their own (so a helper can take
    some); each comes out bit-identical to the library's ``distill_sweep`` on the same settings,
    and the same candidate is kept."""
    from paper import common

    from ensemble_kd import DistillConfig, ModelSpec, ViewConfig, make_transfer_set
    from ensemble_kd.sweep import distill_sweep

    ctx = Context(tmp_path / "run", TINY, digits, device="cpu", log=io.StringIO())
    spec = ModelSpec("mlp", (16,), 0.0)
    torch.manual_seed(0)
    teachers = [ModelSpec("mlp", (24,), 0.0).build(digits.input_shape, digits.n_classes)
                for _ in range(2)]
    views = ViewConfig(shift=1, views=2, seed=0)
    configs = [DistillConfig(temperature=t, alpha=a, views=views) for t, a in ((2, 0.5), (4, 0.9))]
    transfer = make_transfer_set(digits)
    mine = ctx.sweep(tmp_path / "run" / "sweep", spec, 3, 2, teachers, transfer, configs,
                     label="student")

    def make():
        common.seed_everything(3)
        return spec.build(digits.input_shape, digits.n_classes)

    ref = distill_sweep(make, teachers, transfer, ctx.train_config(2, 3), configs,
                        val=(digits.x_val, digits.y_val), run_dir=tmp_path / "ref")
    assert [c[:4] for c in mine.candidates] == [c[:4] for c in ref.candidates]
    assert mine.best == ref.best
    for a, b in zip(mine.model.state_dict().values(), ref.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert mine.candidates[0].val_acc != mine.candidates[1].val_acc  # two different students
    assert list((tmp_path / "run").rglob("owner.pid")) == []  # cache and units released


def test_every_cache_is_made_under_a_hold_which_removes_what_a_killed_build_left(tmp_path,
                                                                                 digits):
    """A single-config sweep and a distilled unit make their teachers' cache through
    ``Context.teacher_cache`` (held, so a helper never writes it at the same time); a temporary
    file that a killed build left there is removed, and the cache itself is kept."""
    from ensemble_kd import DistillConfig, ModelSpec, make_transfer_set

    log = io.StringIO()
    ctx = Context(tmp_path, TINY, digits, device="cpu", log=log)
    torch.manual_seed(0)
    teachers = [ModelSpec("mlp", (24,), 0.0).build(digits.input_shape, digits.n_classes)]
    spec, transfer = ModelSpec("mlp", (16,), 0.0), make_transfer_set(digits)
    cfg = DistillConfig(temperature=2, alpha=0.5)
    ctx.sweep(tmp_path / "sweep", spec, 0, 1, teachers, transfer, [cfg], label="lone")
    assert "lone: teachers' cache ready" in log.getvalue()
    cache = tmp_path / "sweep" / "cache"
    made = (cache / "logits.npy").stat().st_mtime_ns
    junk = cache / ".logits.npy.k1lled.tmp"
    junk.write_bytes(b"half a cache")
    ctx.distilled_model(tmp_path / "unit", spec, 1, 1, teachers, transfer, cfg, cache,
                        label="unit")
    assert not junk.exists()
    assert "removing .logits.npy.k1lled.tmp, left by a build that was stopped" in log.getvalue()
    assert (cache / "logits.npy").stat().st_mtime_ns == made  # the cache itself kept
    assert list(tmp_path.rglob("owner.pid")) == []


def test_a_helper_trains_e1s_other_rows_and_the_main_invocation_loads_them(tiny_run, tmp_path):
    """``--helper --only E1`` trains the second row (tiny: two view recipes, so no fair
    baselines ahead of the sweeps); the main invocation then trains only the first row's models
    and comes out exactly as a run without a helper (seeded, CPU)."""
    base = ["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu", "--only", "E1"]
    log = io.StringIO()
    assert main([*base, "--helper"], log=log) == {}
    assert "E1: helper done" in log.getvalue()
    assert not (tmp_path / "e1" / "result.json").exists()  # a helper saves no result
    assert list(tmp_path.rglob("owner.pid")) == []  # every unit released
    log = io.StringIO()
    data = main(base, log=log)
    trained = [ln for ln in log.getvalue().splitlines()
               if "distilling" in ln or "training on" in ln]  # a sweep loads its finished ones
    assert trained and not any("cnn" in ln for ln in trained), trained
    assert any("cnn" in ln and "already trained, loaded" in ln
               for ln in log.getvalue().splitlines())
    def numbers(rows):  # every number, without the folders' paths
        text = json.dumps(rows, sort_keys=True)
        return re.sub(r'"folder": "[^"]*"', "", text)

    assert numbers(data["experiments"]["E1"]["rows"]) == numbers(
        tiny_run[1]["experiments"]["E1"]["rows"])


def test_a_helper_trains_e3s_models_and_the_main_invocation_loads_them(tiny_run, tmp_path):
    """``--helper --only E3`` trains the members, the students' candidates and their other
    seeds, each from the last one down (alone here: all of them); the main invocation then
    trains nothing and comes out exactly as a run without a helper (seeded, CPU)."""
    # two student dropouts, two candidates each, one more seed
    assert (TINY.e3_dropout, *TINY.e3_student_dropouts) == (0.1, 0.0)
    assert TINY.e3_temperatures == (2,) and TINY.e3_alphas == (0.5, 0.9) and TINY.e3_seeds == 2
    base = ["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu", "--only", "E3"]
    log = io.StringIO()
    assert main([*base, "--helper"], log=log) == {}
    lines = log.getvalue().splitlines()
    trained = [ln for ln in lines if "training on" in ln]
    assert [ln.split("member ")[1].split()[0] for ln in trained[:3]] == ["3/3", "2/3", "1/3"]
    distilled = [re.search(r"\(dropout ([\d.]+)\).*?(T2-a0\.\d|seed \d)", ln).groups()
                 for ln in lines if ": distilling" in ln]
    assert distilled == [("0", "T2-a0.9"), ("0", "T2-a0.5"), ("0.1", "T2-a0.9"),
                         ("0.1", "T2-a0.5"), (distilled[-1][0], "seed 4")], distilled
    # last, the control: the kept dropout, the students' budget, on hard labels
    assert len(trained) == 4 and f"control cnn 8x16 (dropout {distilled[-1][0]})" in trained[3]
    assert f"{TINY.e3_student_epochs} epochs" in trained[3]
    assert "E3: helper done" in log.getvalue()
    assert not (tmp_path / "e3" / "result.json").exists()  # a helper saves no result
    assert list(tmp_path.rglob("owner.pid")) == []  # every unit released
    log = io.StringIO()
    data = main(base, log=log)
    lines = log.getvalue().splitlines()
    assert not any("training on" in ln or "distilling" in ln for ln in lines)
    assert sum(bool(re.search(r"member \d/3 .*already trained, loaded", ln))
               for ln in lines) == 3
    assert sum("candidate" in ln and "already trained, loaded" in ln for ln in lines) == 4
    mine, theirs = data["experiments"]["E3"], tiny_run[1]["experiments"]["E3"]
    for key in ("members", "ensemble", "distilled", "headline_gain_kept", "kept_ci", "control"):
        assert mine[key] == theirs[key], key


def test_a_helper_with_one_e3_candidate_trains_the_seeds_and_control_without_waiting(
        tmp_path, digits, monkeypatch):
    """With a single candidate and dropout there is nothing to choose on validation, so the
    helper trains the students' other seeds and the control at once; only then does it wait for
    the main invocation's sweep."""
    from paper import common, e3_ensemble

    preset = dataclasses.replace(TINY, e3_alphas=(0.5,), e3_student_dropouts=(),
                                 e3_seeds=3, e3_teachers=2)
    ctx = Context(tmp_path, preset, digits, device="cpu", log=io.StringIO(), helper=True)
    members = e3_ensemble.e3_teachers(ctx)
    sweep = e3_ensemble.students_folder(ctx) / "sweep"
    sweep.mkdir(parents=True)

    class Waited(Exception):
        pass

    def no_wait(_):
        raise Waited

    # the main invocation (another live Python process) is busy with the sweep (seed 2)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    _wait_for_program(other.pid, b"time.sleep(120)")
    try:
        (sweep / "owner.pid").write_text(f"{other.pid}\n")
        monkeypatch.setattr(common, "time", SimpleNamespace(
            sleep=no_wait, perf_counter=time.perf_counter, time=time.time))
        with pytest.raises(Waited):
            e3_ensemble._students(ctx, members, helper=True)
    finally:
        other.kill()
        other.wait()
    log = ctx.log.getvalue()
    control = re.search(r"control cnn 8x16 \(dropout 0\.1\), seed 2, the students' budget: "
                        rf"training on hard labels .*{preset.e3_student_epochs} epochs", log)
    assert control and control.start() < log.index(": distilling")  # the control first
    assert re.findall(r"seed (\d): distilling", log) == ["4", "3"]
    assert log.rindex("being made by another invocation") > log.rindex("seed 3: distilling")
    assert not list(sweep.parent.glob("seed_*/owner.pid"))  # its own units released


def test_helper_arguments():
    assert parse_args(["--out", "x", "--only", "E1", "--helper"]).helper
    for bad in (["--helper"], ["--only", "E1,E2", "--helper"],
                ["--only", "E1", "--helper", "--restore", "r.json"]):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *bad])


def test_wall_time_counts_overlapping_invocations_once(tmp_path, digits):
    ctx = Context(tmp_path, TINY, digits, device="cpu", log=io.StringIO())
    now = ctx.invocation["started_unix"]
    run = json.loads((tmp_path / "run.json").read_text())
    run["invocations"] += [
        {"id": "a", "started_unix": now - 1000, "seconds": 100.0},  # alone: 100 s
        {"id": "b", "started_unix": now - 500, "seconds": 200.0},  # overlaps c
        {"id": "c", "started_unix": now - 400, "seconds": 200.0},  # until now - 200
    ]
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert ctx.wall_seconds() == pytest.approx(100 + 300 + ctx.invocation["seconds"], abs=1)


def test_parse_args():
    assert parse_args(["--out", "x"]).preset == "full"
    assert parse_args(["--out", "x", "--quick"]).preset == "quick"
    assert parse_args(["--out", "x", "--only", "e1, E3"]).only == ["E1", "E3"]
    assert parse_args(["--out", "x", "--only", "E6"]).only == ["E6"]
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--only", "E7"])
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--quick", "--preset", "full"])


def test_share_of_gap_and_summary():
    # paper E1 in accuracies: hard 146 errors, teacher 67, distilled 74 -> 72/79 of the gap
    assert share_of_gap(1 - 0.0146, 1 - 0.0067, 1 - 0.0074) == pytest.approx(72 / 79)
    assert share_of_gap(0.9, 0.9, 0.95) is None  # no gap: no ratio
    assert share_of_gap(0.9, 0.8, 0.85) is None  # "better" is worse
    s = summary([1.0, 2.0, 3.0])
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert summary([5.0])["std"] == 0.0
    assert summary([])["mean"] is None


def test_bias_is_chosen_on_the_given_data():
    # class 2 never wins without help; a bias of 1.5 fixes the two class-2 rows without
    # breaking the others (their margins over class 2 are 3), 3.5 would break them
    logits = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([2, 2, 0, 1])
    grid = torch.arange(0, 4.01, 0.5, dtype=torch.float64)
    bias, curve = choose_bias(logits, y, 2, grid)
    assert bias == 1.5  # the smallest bias with the best accuracy
    assert max(r["acc"] for r in curve) == 1.0
    before = class_counts(logits, y, 2, 0.0)
    assert before == {"errors": 2, "class_errors": 2, "class_n": 2, "recall": 0.0, "acc": 0.5}
    assert class_counts(logits, y, 2, 3.5)["errors"] == 2  # too much bias: the others break


def test_pooled_coverage_sums_rows():
    run = {"by_coverage": [
        {"covering": 0, "label": "0", "n": 10, "generalist_correct": 8, "combined_correct": 8},
        {"covering": 1, "label": "1", "n": 5, "generalist_correct": 4, "combined_correct": 5}]}
    rows = _pooled_coverage([run, run])
    assert [(r["n"], r["change"]) for r in rows] == [(20, 0), (10, 2)]
    assert rows[1]["relative_change"] == pytest.approx(2 / 8)


def test_partial_report_marks_pending(tmp_path):
    meta = {"preset": "tiny", "quick": True, "command": "x", "date": "d", "machine": "m",
            "wall_seconds": 1.0, "invocations": 1, "data": "d", "dataset": "digits"}
    data = rep.write_report(tmp_path, {}, meta)
    assert all(data[k] is None for k in HEADLINE_KEYS) and data["complete"] is False
    md = (tmp_path / "report.md").read_text()
    assert md.count("Not run yet (pending).") == 5 and "E6" not in md
    assert "| a \\| b |" in rep._md_table(["a | b"], [])


def test_the_e6_module_joins_the_run_after_e5(monkeypatch):
    from paper import runner

    order, modules = runner.experiments()
    assert order == ["E3", "E4", "E5", "E6", "E1", "E2"]
    assert modules["E6"].__name__ == "paper.e6_merged"
    # an optional experiment whose module does not exist is left out, and --only refuses it
    monkeypatch.setitem(runner.OPTIONAL, "E6", ("e6_not_there", "E5"))
    assert "E6" not in runner.experiments()[0]
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--only", "E6"])


def test_report_renders_an_e6_result_and_its_key(tmp_path):
    meta = {"preset": "tiny", "quick": True, "command": "x", "date": "d", "machine": "m",
            "wall_seconds": 1.0, "invocations": 1, "data": "d", "dataset": "digits"}
    e6 = {"headline_gain_kept": 0.62, "gain_kept_ci": [0.41, 0.80], "epochs": 5, "alpha": 0.9,
          "temperature": 2.0,
          "generalists": [{"generalist": 0, "generalist_acc": 0.90, "control_acc": 0.901,
                           "combined_acc": 0.91, "merged_acc": 0.907, "gain_kept": 0.62}]}
    data = rep.write_report(tmp_path, {"E6": e6}, meta,
                            expected=["E3", "E4", "E5", "E6", "E1", "E2"])
    assert data["e6_specialist_gain_kept"] == 0.62 and data["e6_specialist_gain_kept_ci"] == [0.41, 0.80]
    md = (tmp_path / "report.md").read_text()
    assert "E6. Specialists distilled back into one model" in md
    assert "**62%**, 95% interval [41%, 80%]" in md
    assert "| 62.0% [41%, 80%] | yes |" in md  # the summary row: target 50%
    assert md.count("Not run yet (pending).") == 5
    # no gain to keep: n/a with the reason, never a number
    none = {**e6, "headline_gain_kept": None, "gain_kept_ci": None,
            "note": "the specialists gain nothing over the control"}
    data = rep.write_report(tmp_path, {"E6": none}, meta,
                            expected=["E3", "E4", "E5", "E6", "E1", "E2"])
    assert data["e6_specialist_gain_kept"] is None
    md = (tmp_path / "report.md").read_text()
    assert "**n/a**: the specialists gain nothing over the control." in md
    assert "| E6 share of the specialists' gain kept by one merged model |  | 50% | n/a | n/a |" \
        in md
    assert "E6: no share of the gain kept: the specialists gain nothing" in md


def test_late_change_and_the_gap_share_interval(digits):
    assert late_change([0.5, 0.6, 0.7, 0.8, 0.8, 0.81, 0.81, 0.81, 0.82, 0.83]) == pytest.approx(
        0.83 - 0.81)  # the last 20% of 10 epochs: 2 epochs
    assert late_change([0.5, 0.6]) is None  # too short to say
    ctx = SimpleNamespace(preset=TINY)
    rng = np.random.default_rng(0)
    n = 4000
    worse = (rng.random((3, n)) < 0.80)  # (seeds, N)
    better = (rng.random((1, n)) < 0.90)
    ours = (rng.random((3, n)) < 0.85)
    low, high = gap_share_ci(ctx, worse, better, ours)
    est = share_of_gap(worse.mean(), better.mean(), ours.mean())
    assert low < est < high and low > 0.2 and high < 0.8


def test_a_result_measured_with_fewer_generalists_is_measured_again(tiny_run, tmp_path,
                                                                      monkeypatch):
    """E5 with one more generalist: the first generalist's specialists are loaded, the new one's
    trained, and the result covers both; E6 (same count) would be stale too, E3 is not."""
    import shutil

    from paper import runner

    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    saved = json.loads((out / "e5" / "result.json").read_text())
    assert saved["counts"] == {"e5_generalists": TINY.e5_generalists}
    more = dataclasses.replace(TINY, e5_generalists=TINY.e5_generalists + 1)
    monkeypatch.setitem(runner.PRESETS, "tiny", more)
    log = io.StringIO()
    data = main(["--preset", "tiny", "--out", str(out), "--device", "cpu", "--only", "E3,E5"],
                log=log)
    text = log.getvalue()
    assert "E3: already done" in text
    assert (f"E5: measured with e5_generalists={TINY.e5_generalists}, the preset asks "
            f"e5_generalists={TINY.e5_generalists + 1}: measuring again") in text
    trained = [ln for ln in text.splitlines() if "specialists training" in ln]
    assert len(trained) == 1 and f"generalist {TINY.e5_generalists + 1}/" in trained[0]
    e5 = data["experiments"]["E5"]
    assert len(e5["runs"]) == TINY.e5_generalists + 1
    assert e5["runs"][0] == saved["runs"][0]  # the first generalist's result did not move


def test_summary_verdicts_against_the_issues_targets_only():
    # E2 has no target: its paper number (98.6%) is shown beside it, never used as one
    results = {"E2": {"headline_recall_after_bias": 0.68, "recall_after_bias_vs_present": 0.96},
               "E4": {"headline_gap_recovered": 0.72, "gap_recovered_ci": [0.65, 0.8]}}
    (_, _, rows), = rep._summary_blocks(results, rep.headlines(results), ["E2", "E4"])
    verdict = {r[0][:2]: r[-1] for r in rows}
    assert verdict == {"E2": "no target", "E4": "yes"}
    results["E4"]["headline_gap_recovered"] = 0.61
    (_, _, rows), = rep._summary_blocks(results, rep.headlines(results), ["E4"])
    assert rows[0][-1] == "no"


def test_summary_says_why_e1_has_no_headline_and_gives_the_other_rows():
    e1 = {"headline_gap_closed": None,
          "rows": [{"name": "mlp", "teacher_clearly_better": False, "margin": -0.0022,
                    "gap_closed": -0.2, "gap_closed_ci": [-7.6, 0.67]},
                   {"name": "cnn", "teacher_clearly_better": True, "margin": 0.023,
                    "gap_closed": 0.173, "gap_closed_ci": [-0.02, 0.339]}]}
    results = {"E1": e1}
    (_, _, rows), = rep._summary_blocks(results, rep.headlines(results), ["E1"])
    assert rows[0][3] == ("n/a: no mlp teacher clearly beat the student (margin -0.22 points); "
                          "cnn row 17.3% [-2%, 34%]")
    assert rows[0][-1] == "n/a"


def test_e6_on_views_caches_q_per_view_and_records_the_recipe(tiny_run, tmp_path, monkeypatch):
    """E6 with a view recipe (in a copy of the tiny run without its E6): q is cached for V views
    of every transfer image, the result and the report say which inputs both models saw."""
    import shutil

    from paper import runner

    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    shutil.rmtree(out / "e6")
    views = dataclasses.replace(TINY, e6_view_recipe="shift1", e6_views=2)
    monkeypatch.setitem(runner.PRESETS, "tiny", views)
    data = main(["--preset", "tiny", "--out", str(out), "--device", "cpu", "--only", "E6"],
                log=io.StringIO())
    e6 = data["experiments"]["E6"]
    assert (e6["view_recipe"], e6["views"]) == ("shift1", 2)
    merged = [g for g in e6["generalists"] if "q_fingerprint" in g]
    assert merged
    for g in merged:
        meta = json.loads((out / "e6" / f"generalist_{g['generalist']}" / "q_cache" /
                           "meta.json").read_text())
        assert meta["views"]["shift"] == 1 and meta["views"]["views"] == 2
    assert g["q_fingerprint"] != tiny_run[1]["experiments"]["E6"]["generalists"][
        g["generalist"]]["q_fingerprint"]
    assert "2 cached views shift1 per image" in (out / "report" / "report.md").read_text()
