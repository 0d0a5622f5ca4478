"""Shared bookkeeping of the reproduction: the run folder, resumable units, evaluation, statistics.

A *unit* is one trained model, saved as ``<folder>/model.pt`` (``ensemble_kd.save_model``, atomic)
as soon as it is trained; a rerun loads it instead of training again, and an interrupted unit
resumes from the shared loop's per-epoch checkpoint in the same folder. An experiment's numbers are
saved as ``<out>/<exp>/result.json`` when it completes and the experiment is skipped on a rerun.
All training goes through ``ensemble_kd.train.train`` / ``distill`` / ``train_ensemble`` /
``specialists.train_specialists``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from ensemble_kd import (
    DistillConfig,
    Splits,
    TeacherSpec,
    TensorBatches,
    TrainConfig,
    TransferSet,
    distill,
    load_model,
    predict_logits,
    save_model,
    seed_everything,
    train,
)
from ensemble_kd.cache import inputs_fingerprint
from ensemble_kd.ensemble import data_meta, train_ensemble
from ensemble_kd.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from ensemble_kd.predict import resolve_device

from .presets import Preset

RUN_FILE = "run.json"
SETTINGS_FILE = "settings.json"
LOCK_FILE = "owner.pid"
SHARED_SETTINGS = ("dataset", "batch_size", "lr")


class Context:
    """The run: output folder, preset, data, device, progress lines and wall-time accounting.

    Args:
        out: the run folder (created).
        preset: the budgets.
        splits: the data set.
        device: "auto", "cpu" or "cuda".
        command: the command line, recorded in ``run.json``.
        log: where stage lines go (default stdout).
    """

    def __init__(self, out: str | os.PathLike, preset: Preset, splits: Splits, *,
                 device: str = "auto", command: str = "", log=None):
        self.out = Path(out)
        self.preset = preset
        self.splits = splits
        self.device = resolve_device(device)
        self.log = log or sys.stdout
        self.t0 = time.perf_counter()
        self.stage = ("", 0, 0)  # (experiment, units done, units planned)
        self.out.mkdir(parents=True, exist_ok=True)
        self._open_run(command)

    # ---------------------------------------------------------------- run.json

    def _open_run(self, command: str) -> None:
        """Check that ``out`` belongs to this preset and data; start this invocation's record."""
        path = self.out / RUN_FILE
        run = read_json(path) if path.exists() else None
        ident = {"preset": self.preset.name, "data_fingerprint": self.splits.fingerprint()}
        if run is not None:
            for key, want in ident.items():
                if run.get(key) != want:
                    raise ValueError(
                        f"{self.out} holds a run with another {key.replace('_', ' ')} "
                        f"({run.get(key)!r}, this run: {want!r}); use a new --out folder"
                    )
        else:
            run = {**ident, "invocations": []}
        self.invocation = {
            "id": f"{os.getpid()}-{time.time():.3f}",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "started_unix": time.time(), "seconds": 0.0, "command": command, "machine": machine(),
        }
        self.run = run
        self.save_run()

    def claim(self, folder: str, prefixes: tuple[str, ...]) -> None:
        """Tie ``out/folder`` to the preset's settings that start with ``prefixes`` (plus the
        shared ones), and to this process while it runs.

        A folder whose models were trained with other settings is refused, so a changed setting
        never silently reuses old models; settings of other experiments may change between
        invocations (e.g. to redo E1 only, delete ``out/e1``). A folder in use by another live
        process (two invocations may run different experiments side by side, e.g. ``--only
        E3,E4,E5`` and ``--only E1,E2``) is refused too, so no model is trained twice at once.
        """
        self._lock(self.out / folder)
        want = {k: v for k, v in self.preset.as_dict().items()
                if k in SHARED_SETTINGS or k.startswith(prefixes)}
        want = json.loads(json.dumps(want))  # tuples -> lists, as read back from JSON
        path = self.out / folder / SETTINGS_FILE
        if path.exists():
            have = read_json(path)
            # a setting the folder has not heard of was added to the presets later: such
            # settings only ever add models (variants), never change the existing ones
            diff = sorted(k for k in set(want) | set(have)
                          if k in have and want.get(k) != have.get(k))
            if diff:
                raise ValueError(
                    f"{path.parent} was made with other settings ({', '.join(diff)}); delete "
                    f"that folder to redo it with these settings, or use a new --out folder"
                )
            if set(want) - set(have):
                atomic_write_json(path, {**have, **want})
        else:
            atomic_write_json(path, want)

    def _lock(self, folder: Path) -> None:
        path = folder / LOCK_FILE
        if path.exists():
            try:
                pid = int(path.read_text().split()[0])
            except (ValueError, IndexError):
                pid = None
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise ValueError(
                    f"{folder} is in use by another running process (pid {pid}); run other "
                    "experiments beside it with --only, or wait for it to finish"
                )
            if pid == os.getpid():
                return
        atomic_write_text(path, f"{os.getpid()}\n")

    def save_run(self) -> None:
        """Record this invocation's wall time in ``run.json`` (merged with what other processes
        wrote there, by invocation id)."""
        self.invocation["seconds"] = round(time.perf_counter() - self.t0, 1)
        path = self.out / RUN_FILE
        run = read_json(path) if path.exists() else self.run
        others = [i for i in run.get("invocations", []) if i.get("id") != self.invocation["id"]]
        run["invocations"] = [*others, self.invocation]
        self.run = run
        atomic_write_json(path, run)

    def wall_seconds(self) -> float:
        """Wall time during which at least one invocation worked on this folder (the union of
        their intervals, so invocations running side by side are not counted twice)."""
        self.save_run()
        spans = sorted((t, t + i["seconds"]) for i in self.run["invocations"]
                       if (t := _start(i)) is not None)
        total, end = 0.0, -math.inf
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    # ---------------------------------------------------------------- messages

    def say(self, msg: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        el = time.perf_counter() - self.t0
        print(f"[{stamp} +{el / 60:5.1f} min] {msg}", file=self.log, flush=True)

    def begin(self, exp: str, planned: int) -> None:
        """Start counting the units of experiment ``exp`` (for the [k/n] in stage lines)."""
        self.stage = (exp, 0, planned)
        self.say(f"{exp}: start ({planned} models to train or load)")

    def _tag(self, count: int = 1) -> str:
        exp, done, planned = self.stage
        self.stage = (exp, done + count, planned)
        span = f"{done + 1}" if count == 1 else f"{done + 1}-{done + count}"
        return f"{exp} [{span}/{planned}]"

    # ---------------------------------------------------------------- results

    def result_path(self, exp: str) -> Path:
        return self.out / exp.lower() / "result.json"

    def load_result(self, exp: str) -> dict | None:
        path = self.result_path(exp)
        return read_json(path) if path.exists() else None

    def save_result(self, exp: str, result: dict) -> None:
        atomic_write_json(self.result_path(exp), result)
        self.save_run()

    # ---------------------------------------------------------------- units

    def train_config(self, epochs: int, seed: int, *, lr: float | None = None,
                     **kw) -> TrainConfig:
        """Adam with a cosine schedule, the preset's batch size and learning rate."""
        p = self.preset
        return TrainConfig(epochs=epochs, batch_size=p.batch_size, lr=p.lr if lr is None else lr,
                           seed=seed, **kw)

    def _finish(self, folder: Path, model: nn.Module, meta: dict, tag: str, label: str,
                t: float) -> nn.Module:
        save_model(folder / "model.pt", model, {**data_meta(self.splits), **meta})
        ck = folder / "checkpoint.pt"
        if ck.exists():
            ck.unlink()  # only needed to resume this unit, which is now complete
        acc = accuracy(model, self.splits.x_val, self.splits.y_val, self.device)
        self.say(f"{tag} {label}: trained in {_fmt_s(time.perf_counter() - t)}, "
                 f"validation accuracy {100 * acc:.2f}%")
        self.save_run()
        return model

    def _loaded(self, folder: Path, tag: str, label: str) -> nn.Module | None:
        path = folder / "model.pt"
        if not path.exists():
            return None
        self.say(f"{tag} {label}: already trained, loaded")
        return load_model(path, self.device)[0]

    def hard_model(self, folder: Path, spec: TeacherSpec, seed: int, epochs: int, *,
                   x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                   jitter: int = 0, early_stopping: int = 0, label: str = "") -> nn.Module:
        """A model trained on hard labels (all training data unless ``x``, ``y`` are given)."""
        tag = self._tag()
        if (m := self._loaded(folder, tag, label)) is not None:
            return m
        s = self.splits
        x = s.x_train if x is None else x
        y = s.y_train if y is None else y
        self.say(f"{tag} {label}: training on hard labels ({len(y)} examples, {epochs} epochs)")
        t = time.perf_counter()
        seed_everything(seed)  # initial weights
        model = spec.build(s.input_shape, s.n_classes)
        cfg = self.train_config(epochs, seed, early_stopping=early_stopping)
        res = train(
            model, TensorBatches(x, y, batch_size=cfg.batch_size, jitter=jitter), cfg,
            val=(s.x_val, s.y_val), run_dir=folder, device=self.device, desc=label,
            extra_state={"data": s.fingerprint(), "x": inputs_fingerprint(x), "jitter": jitter},
        )
        return self._finish(folder, res.model, {"role": "hard", "seed": seed,
                                                 "best_epoch": res.best_epoch}, tag, label, t)

    def distilled_model(self, folder: Path, spec: TeacherSpec, seed: int, epochs: int,
                        teachers: Sequence[nn.Module], transfer: TransferSet,
                        dcfg: DistillConfig, cache_dir: Path, *, label: str = "") -> nn.Module:
        """A model distilled from ``teachers`` on ``transfer`` (same init as the hard model)."""
        tag = self._tag()
        if (m := self._loaded(folder, tag, label)) is not None:
            return m
        s = self.splits
        self.say(f"{tag} {label}: distilling ({len(transfer)} examples, {epochs} epochs, "
                 f"T={dcfg.temperature:g}, alpha={dcfg.alpha:g}, {len(teachers)} teacher(s))")
        t = time.perf_counter()
        seed_everything(seed)
        model = spec.build(s.input_shape, s.n_classes)
        res = distill(
            model, list(teachers), transfer, self.train_config(epochs, seed), dcfg,
            val=(s.x_val, s.y_val), run_dir=folder, cache_dir=cache_dir, device=self.device,
        )
        return self._finish(folder, res.model, {"role": "distilled", "seed": seed,
                                                 "temperature": dcfg.temperature,
                                                 "alpha": dcfg.alpha, "combine": dcfg.combine},
                            tag, label, t)

    def ensemble(self, folder: Path, spec: TeacherSpec, n: int, epochs: int, *,
                 jitter: int = 0, label: str = "teacher") -> list[nn.Module]:
        """``n`` models differing by seed (0 .. n-1) via ``train_ensemble``; one unit each.

        ``train_ensemble`` is called with 1, 2, ..., n teachers in turn: it loads the finished
        ones and trains the next, so every teacher gets its own progress line.
        """
        models: list[nn.Module] = []
        cfg = self.train_config(epochs, 0)
        for k in range(n):
            tag = self._tag()
            name = f"{label} {k + 1}/{n}"
            if (folder / f"teacher_{k}" / "model.pt").exists():
                if k == n - 1:
                    self.say(f"{tag} {name}: already trained, loaded"
                             + (f" (with the {n - 1} before it)" if n > 1 else ""))
                continue
            self.say(f"{tag} {name}: training on hard labels ({epochs} epochs, jitter {jitter})")
            t = time.perf_counter()
            models = train_ensemble(self.splits, spec, k + 1, cfg, folder, jitter=jitter,
                                    device=self.device)
            ck = folder / f"teacher_{k}" / "checkpoint.pt"
            if ck.exists():
                ck.unlink()  # only needed to resume this teacher, which is now complete
            acc = accuracy(models[k], self.splits.x_val, self.splits.y_val, self.device)
            self.say(f"{tag} {name}: trained in {_fmt_s(time.perf_counter() - t)}, "
                     f"validation accuracy {100 * acc:.2f}%")
            self.save_run()
        if len(models) != n:
            models = train_ensemble(self.splits, spec, n, cfg, folder, jitter=jitter,
                                    device=self.device)
        return models


# -------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    """Share of ``x`` (N, ...) classified as ``y`` (N,) at T = 1."""
    return float((predict_logits(model, x, device=device).argmax(1) == y).double().mean())


def scores(model: nn.Module, ctx: Context, *, train_x=None, train_y=None) -> dict:
    """Test and validation accuracy, test errors (count) and NLL; train accuracy if data given."""
    s = ctx.splits
    logits = predict_logits(model, s.x_test, device=ctx.device)  # (N, C)
    out = logits_scores(logits, s.y_test)
    out["val_acc"] = accuracy(model, s.x_val, s.y_val, ctx.device)
    if train_x is not None:
        out["train_acc"] = accuracy(model, train_x, train_y, ctx.device)
    return out


def logits_scores(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, error count and mean NLL (nats) of logits (N, C) against labels (N,)."""
    pred = logits.argmax(1)
    nll = torch.nn.functional.cross_entropy(logits.double(), y)
    return {"test_acc": float((pred == y).double().mean()), "test_errors": int((pred != y).sum()),
            "test_nll": float(nll), "n_test": int(len(y))}


def summary(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), n and the values themselves."""
    v = [float(x) for x in values]
    if not v:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(v), "values": v}


def share_of_gap(worse: float, better: float, ours: float) -> float | None:
    """(ours - worse) / (better - worse): the share of the gap from ``worse`` to ``better``
    that ``ours`` closes (accuracies), or None when there is no gap to close."""
    gap = better - worse
    if not gap > 0:
        return None
    return (ours - worse) / gap


def metrics_history(folder: Path) -> list[dict]:
    """The shared loop's per-epoch records of a unit (empty when none were written)."""
    path = Path(folder) / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def machine() -> str:
    """CPU model, cores available, torch and Python versions (for the report)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {cores} CPU core(s) available{gpu}; torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s); Python {platform.python_version()}")


def _start(invocation: dict) -> float | None:
    """Start of an invocation in seconds since the epoch (from its ISO date when older)."""
    if "started_unix" in invocation:
        return float(invocation["started_unix"])
    try:
        return datetime.fromisoformat(invocation["started"]).timestamp()
    except (KeyError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fmt_s(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def widths_name(widths: Sequence[int]) -> str:
    return "x".join(str(w) for w in widths)
