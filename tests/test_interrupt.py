"""Interrupted runs lose nothing: SIGKILL in the middle of an epoch, resume, same bits.

Each test starts the real command line (``python -m ensemble_kd ...``) twice: once to the end (the
reference) and once killed with SIGKILL half-way through an epoch after the first checkpoint, then
resumed with ``--resume``. While the processes run, the test keeps loading the training checkpoint:
atomic writes mean a reader must never see half a file. The resumed run's final weights must equal
the reference's bit for bit (CPU, one thread), and its log must hold each epoch exactly once.

Epochs are made slow enough to hit the middle of one (batch size 4: about 900 steps of a tiny MLP,
about half a second on an idle core), and the kill waits for half of the previous epoch's measured
duration, so a loaded machine only stretches the timing instead of breaking it.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ensemble_kd.checkpoint import load_checkpoint, save_model
from ensemble_kd.data import load_dataset
from ensemble_kd.ensemble import ModelSpec, data_meta, train_ensemble
from ensemble_kd.io import (
    append_jsonl,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    read_jsonl,
)
from ensemble_kd.train import TrainConfig

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4  # killed in epoch 2: two more epochs of margin before the run could finish by itself
SYNTHETIC = {"n_classes": 6, "n_groups": 2, "n_train": 4000, "synthetic_seed": 0}
DATA = [
    "--dataset", "synthetic", "--synthetic-classes", "6", "--synthetic-groups", "2",
    "--synthetic-train", "4000", "--synthetic-seed", "0", "--val-fraction", "0.1", "--data-seed", "0",
]  # fmt: skip
# Every training option spelled out, so changes of the defaults cannot make the test slow.
TRAIN = [
    "--epochs", str(EPOCHS), "--batch-size", "4", "--optimizer", "adam", "--lr", "0.003",
    "--schedule", "cosine", "--early-stopping", "0", "--seed", "0", "--device", "cpu", "--quiet",
]  # fmt: skip
TIMEOUT = 240.0  # seconds for one process, generous for a loaded 2-core machine


def _env() -> dict:
    # One thread: reproducible float sums and no fight for the two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ensemble_kd", *args], cwd=cwd, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _watch(proc: subprocess.Popen, ckpt: Path, *, kill_in_epoch: int | None = None) -> list[int]:
    """Load ``ckpt`` over and over while ``proc`` runs; return the epochs seen in it.

    Every load must succeed (a half-written checkpoint would raise). With ``kill_in_epoch=e``: once
    the checkpoint of epoch e - 1 is on disk, wait half as long as that epoch took, so that epoch e
    is half done, and SIGKILL the process.
    """
    seen: list[int] = []
    kill_at = None
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{proc.args} did not finish in {TIMEOUT} s")
        if ckpt.exists():
            ck = load_checkpoint(ckpt)
            epoch = int(ck["epoch"])
            if not seen or seen[-1] != epoch:
                seen.append(epoch)
            if kill_in_epoch is not None and kill_at is None and epoch >= kill_in_epoch - 1:
                took = json.loads(ck["history"])[-1]["seconds"]
                kill_at = time.monotonic() + took / 2
        if kill_at is not None and time.monotonic() >= kill_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            break
        time.sleep(0.005)
    return seen


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"{proc.args} failed:\n{err}"


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_tensors(a)["state_dict"], load_tensors(b)["state_dict"]
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs between {a} and {b}"


def _log(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(path)]


def _kill_resume_compare(args: list[str], tmp: Path, rel_ckpt: str, rel_model: str) -> None:
    """Reference run and killed run side by side, then the resume; compare weights and logs."""
    ref_out, out = tmp / "reference", tmp / "interrupted"
    ref = _start([*args, "--out", str(ref_out)], tmp)
    proc = _start([*args, "--out", str(out)], tmp)
    try:
        seen = _watch(proc, out / rel_ckpt, kill_in_epoch=2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"not killed: {proc.stderr.read()}"
    assert seen and seen[0] >= 1
    last = load_checkpoint(out / rel_ckpt)  # the last good checkpoint survives the kill
    assert 1 <= int(last["epoch"]) < EPOCHS
    assert not (out / rel_model).exists()

    resumed = _start([*args, "--out", str(out), "--resume"], tmp)
    seen_after = _watch(resumed, out / rel_ckpt)
    _finish(resumed)
    assert seen_after[-1] == EPOCHS
    _finish(ref)

    _same_weights(ref_out / rel_model, out / rel_model)
    log = _log(out / Path(rel_ckpt).parent / "metrics.jsonl")
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))
    assert log == _log(ref_out / Path(rel_ckpt).parent / "metrics.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A teacher (also the specialists' generalist) on the synthetic data the commands load."""
    root = tmp_path_factory.mktemp("interrupt")
    splits = load_dataset("synthetic", val_fraction=0.1, seed=0, **SYNTHETIC)
    torch.manual_seed(0)
    (teacher,) = train_ensemble(
        splits, ModelSpec("mlp", (32,), 0.0), 1, TrainConfig(epochs=3, batch_size=64, lr=3e-3),
        root / "teachers",
    )
    save_model(root / "generalist.pt", teacher, data_meta(splits))
    atomic_write_json(root / "subsets.json", {"subsets": [splits.groups[0]]})
    return {"root": root, "teachers": root / "teachers", "generalist": root / "generalist.pt",
            "subsets": root / "subsets.json"}


def test_teacher_training_survives_sigkill(tmp_path):
    args = [
        "train-ensemble", *DATA, *TRAIN, "--teachers", "1", "--teacher-arch", "mlp",
        "--teacher-widths", "32", "--teacher-dropout", "0.1", "--teacher-jitter", "0",
        "--teacher-epochs", str(EPOCHS),
    ]  # fmt: skip
    _kill_resume_compare(args, tmp_path, "teachers/teacher_0/checkpoint.pt",
                         "teachers/teacher_0/model.pt")


def test_distillation_survives_sigkill(tmp_path, trained):
    # unlabelled: no hard-label baseline to train first, the student is the only training
    args = [
        "distill", *DATA, *TRAIN, "--teachers", str(trained["teachers"]), "--student-arch", "mlp",
        "--student-widths", "16", "--student-dropout", "0.1", "--unlabelled",
        "--transfer-fraction", "1.0", "--temperature", "2", "--alpha", "0.9", "--combine", "sum",
        "--cache-dtype", "float32", "--cache-topk", "0", "--student-jitter", "0",
    ]  # fmt: skip
    _kill_resume_compare(args, tmp_path, "student/checkpoint.pt", "student/model.pt")


def test_specialist_training_survives_sigkill(tmp_path, trained):
    args = [
        "train-specialists", *DATA, *TRAIN, "--generalist", str(trained["generalist"]),
        "--subsets", str(trained["subsets"]), "--specialist-epochs", str(EPOCHS),
        "--specialist-share", "0.5", "--specialist-alpha", "0.5", "--specialist-temperature", "2",
        "--top-n", "1",
    ]  # fmt: skip
    _kill_resume_compare(args, tmp_path, "specialists/specialist_0/checkpoint.pt",
                         "specialists/specialist_0/model.pt")


def test_distilling_specialists_into_one_model_survives_sigkill(tmp_path, trained):
    # Merged model and control train 4 epochs each: batches of 32 (about 110 steps an epoch) keep
    # the test short and an epoch still long enough to be killed in its middle.
    run = tmp_path / "run"  # the specialists to merge: a quick train-specialists run
    setup = _start([
        "train-specialists", *DATA, "--epochs", "1", "--batch-size", "64", "--device", "cpu",
        "--quiet", "--generalist", str(trained["generalist"]), "--subsets", str(trained["subsets"]),
        "--out", str(run)], tmp_path)  # fmt: skip
    _finish(setup)
    args = [
        "distill-specialists", "--run", str(run), "--generalist", str(trained["generalist"]),
        "--merge-epochs", str(EPOCHS), "--merge-batch-size", "32", "--merge-lr", "0.003",
        "--merge-temperature", "2", "--merge-alpha", "0.9", "--merge-control", "self",
        "--device", "cpu", "--quiet",
    ]  # fmt: skip
    _kill_resume_compare(args, tmp_path, "model/checkpoint.pt", "model/model.pt")
    _same_weights(tmp_path / "reference" / "control" / "model.pt",
                  tmp_path / "interrupted" / "control" / "model.pt")


# ---------------------------------------------------------------- the atomic writers themselves


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"old": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"new": ')  # half written when the writer dies
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "# hi\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == mode


def test_append_jsonl_drops_a_torn_line_and_appends_whole_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lo')  # left by an old, killed, appending writer
    append_jsonl(path, {"epoch": 2})
    append_jsonl(path, {"epoch": 3})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'


_WRITERS = {"save", "savez", "savez_compressed", "savefig", "write_text", "write_bytes", "to_csv",
            "dump", "tofile"}


def _is_atomic_path(node: ast.AST) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return isinstance(f, ast.Name | ast.Attribute) and getattr(f, "id", getattr(f, "attr", "")) == (
        "atomic_path")


class _Writers(ast.NodeVisitor):
    """Calls that write files outside an ``atomic_path`` block (or an in-memory buffer)."""

    def __init__(self):
        self.depth, self.buffers, self.found = 0, set(), []

    def visit_Assign(self, node: ast.Assign) -> None:
        f = node.value.func if isinstance(node.value, ast.Call) else None
        if getattr(f, "attr", getattr(f, "id", None)) == "BytesIO":
            self.buffers |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        atomic = any(_is_atomic_path(item.context_expr) for item in node.items)
        self.depth += atomic
        self.generic_visit(node)
        self.depth -= atomic

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        writes = isinstance(f, ast.Attribute) and f.attr in _WRITERS
        if isinstance(f, ast.Name) and f.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            writes = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        to_buffer = any(isinstance(a, ast.Name) and a.id in self.buffers for a in node.args)
        if writes and not self.depth and not to_buffer:
            self.found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
        self.generic_visit(node)


def test_every_writer_goes_through_the_atomic_helpers():
    """A static check: outside ``ensemble_kd/io.py`` no code writes a file except under a temporary
    name from ``atomic_path`` (or into an in-memory buffer), so no reader can see half a file."""
    offenders = []
    for folder in ("ensemble_kd", "specialists", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "ensemble_kd" / "io.py":
                continue
            visitor = _Writers()
            visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
            offenders += [f"{path.relative_to(REPO)} {hit}" for hit in visitor.found]
    assert not offenders, "non-atomic writes:\n" + "\n".join(offenders)


def test_the_writer_check_tells_plain_writes_from_atomic_ones():
    code = """
with open(p, "w") as f: f.write("x")
np.save(p, a)
Path(p).write_text("x")
with open(p) as f: f.read()
buf = io.BytesIO()
torch.save(obj, buf)
with atomic_path(p) as tmp, open(tmp, "wb") as f:
    np.savez(f, a=a)
with atomic_path(p) as tmp:
    fig.savefig(tmp)
"""
    visitor = _Writers()
    visitor.visit(ast.parse(code))
    assert [hit.split(":")[0] for hit in visitor.found] == ["line 2", "line 3", "line 4"]
