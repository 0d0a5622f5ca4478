"""Shared bookkeeping of the reproduction: the run folder, resumable units, evaluation, statistics.

A *unit* is one trained model in its own run folder (``ensemble_kd.run.Run``): its ``model.pt`` is
saved as soon as it is trained; a rerun loads it instead of training again, and an interrupted unit
resumes from the shared loop's per-epoch checkpoint in the same folder. An experiment's numbers are
saved as ``<out>/<exp>/result.json`` when it completes and the experiment is skipped on a rerun.
All training goes through the library: ``train_baseline`` (hard labels, on views or not),
``distill``, ``distill_sweep`` (candidates from one cache, best on validation) and
``specialists.train_specialists``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ensemble_kd import (
    DistillConfig,
    ModelSpec,
    Splits,
    TrainConfig,
    TransferSet,
    ViewConfig,
    distill,
    ensure_cache,
    make_transfer_set,
    metrics,
    predict_logits,
    seed_everything,
    train_baseline,
)
from ensemble_kd.ensemble import data_meta
from ensemble_kd.io import atomic_write_json, atomic_write_text, read_json
from ensemble_kd.machine import describe_machine
from ensemble_kd.predict import resolve_device
from ensemble_kd.run import Run
from ensemble_kd.sweep import Candidate, SweepResult, candidate_name, distill_sweep
from ensemble_kd.train import evaluate_logits

from .paper_numbers import share_of_gap
from .presets import Preset, TeacherRecipe

RUN_FILE = "run.json"
SETTINGS_FILE = "settings.json"
LOCK_FILE = "owner.pid"
UNIT_POLL_S = 20.0  # how often a unit another invocation trains is checked for being finished
SHARED_SETTINGS = ("dataset", "batch_size", "lr")
# How many seeds or generalists each experiment's result measures. Model k is the same whatever
# the count, so a changed count keeps a folder's trained models (only adding, or leaving unused,
# the others), and a result measured with other counts is measured again.
RESULT_COUNTS = {"E1": ("e1_seeds",), "E2": ("e2_seeds",), "E3": ("e3_seeds",),
                 "E4": ("e4_seeds",), "E5": ("e5_generalists",), "E6": ("e5_generalists",)}
COUNT_SETTINGS = tuple(dict.fromkeys(k for keys in RESULT_COUNTS.values() for k in keys))


class Context:
    """The run: output folder, preset, data, device, progress lines and wall-time accounting.

    Args:
        out: the run folder (created).
        preset: the budgets.
        splits: the data set.
        device: "auto", "cpu" or "cuda".
        command: the command line, recorded in ``run.json``.
        log: where stage lines go (default stdout).
        helper: this invocation trains models beside a main one (``--helper``): it never holds
            an experiment's folder, only the units it trains.
    """

    def __init__(self, out: str | os.PathLike, preset: Preset, splits: Splits, *,
                 device: str = "auto", command: str = "", log=None, helper: bool = False):
        self.out = Path(out)
        self.helper = helper
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
            "started_unix": time.time(), "seconds": 0.0, "command": command, "machine": describe_machine(),
        }
        self.run = run
        self.save_run()

    def claim(self, folder: str, prefixes: tuple[str, ...], *, lock: bool = True) -> None:
        """Tie ``out/folder`` to the preset's settings that start with ``prefixes`` (plus the
        shared ones), and to this process while it runs.

        A folder whose models were trained with other settings is refused, so a changed setting
        never silently reuses old models; a changed count (``COUNT_SETTINGS``: seeds, generalists)
        is recorded and keeps them, and settings of other experiments may change between
        invocations (e.g. to redo E1 only, delete ``out/e1``). A folder in use by another live
        process (two invocations may run different experiments side by side, e.g. ``--only
        E3,E4,E5`` and ``--only E1,E2``) is refused too, so no model is trained twice at once.
        ``lock=False`` checks the settings only: for a reader of models already finished there
        (E2 loading E1's teacher while E1 trains its students), and for a helper invocation,
        which holds each unit it trains instead (:meth:`_unit`).
        """
        if lock and not self.helper:
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
                          if k in have and k not in COUNT_SETTINGS and want.get(k) != have.get(k)
                          and not (k == "e1_rows" and _adds_teachers(have[k], want.get(k))))
            if diff:
                raise ValueError(
                    f"{path.parent} was made with other settings ({', '.join(diff)}); delete "
                    f"that folder to redo it with these settings, or use a new --out folder"
                )
            if {**have, **want} != have:  # new settings, or changed counts: record them
                atomic_write_json(path, {**have, **want})
        else:
            atomic_write_json(path, want)

    def _lock(self, folder: Path) -> None:
        path = folder / LOCK_FILE
        if (pid := _other_holder(path)) is not None:
            raise ValueError(
                f"{folder} is in use by another running process (pid {pid}); run other "
                "experiments beside it with --only, or wait for it to finish"
            )
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
        """Write ``exp``'s result, with the counts it was measured with (``RESULT_COUNTS``)."""
        result = {**result, "counts": self.counts(exp)}
        atomic_write_json(self.result_path(exp), result)
        self.save_run()

    def counts(self, exp: str) -> dict[str, int]:
        """The preset's counts that ``exp``'s result depends on."""
        return {k: getattr(self.preset, k) for k in RESULT_COUNTS.get(exp, ())}

    def stale_counts(self, exp: str, result: dict) -> dict[str, int]:
        """The counts a saved result was measured with where the preset now asks other ones
        (empty: up to date; a result saved before counts were recorded counts as up to date)."""
        have = result.get("counts") or {}
        return {k: v for k, v in have.items() if self.counts(exp).get(k, v) != v}

    # ---------------------------------------------------------------- units

    def train_config(self, epochs: int, seed: int, *, lr: float | None = None,
                     **kw) -> TrainConfig:
        """Adam with a cosine schedule, the preset's batch size and learning rate."""
        p = self.preset
        return TrainConfig(epochs=epochs, batch_size=p.batch_size, lr=p.lr if lr is None else lr,
                           seed=seed, **kw)

    def _finish(self, folder: Path, model: nn.Module, meta: dict, tag: str, label: str,
                t: float) -> nn.Module:
        Run(folder).finish(model, {**data_meta(self.splits), **meta}, drop_checkpoint=True)
        acc = accuracy(model, self.splits.x_val, self.splits.y_val, self.device)
        self.say(f"{tag} {label}: trained in {_fmt_s(time.perf_counter() - t)}, "
                 f"validation accuracy {100 * acc:.2f}%")
        self.save_run()
        return model

    def _loaded(self, folder: Path, tag: str, label: str) -> nn.Module | None:
        done = Run(folder).load_finished(
            self.device, expect={"data_fingerprint": self.splits.fingerprint()})
        if done is None:
            return None
        self.say(f"{tag} {label}: already trained, loaded")
        return done[0]

    def _hold_unit(self, folder: Path) -> int | None:
        """Mark the unit ``folder`` as trained by this process (``owner.pid``, created
        exclusively: a hard link cannot replace an existing file). Returns None once the mark is
        this process's, or the pid of another live invocation holding it; a dead one's mark is
        taken over."""
        folder.mkdir(parents=True, exist_ok=True)
        path, mine = folder / LOCK_FILE, folder / f".{LOCK_FILE}.{os.getpid()}"
        while True:
            atomic_write_text(mine, f"{os.getpid()}\n")
            try:
                os.link(mine, path)
                return None
            except FileExistsError:
                if (pid := _other_holder(path)) is not None:
                    return pid
                path.unlink(missing_ok=True)  # this process's own or a stale mark: (re)take it
            finally:
                mine.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _held(self, folder: Path, tag: str, label: str) -> Iterator[None]:
        """Hold ``folder`` while the block runs, waiting while another invocation (a
        ``--helper`` beside the main one) holds it."""
        waited, head = False, f"{tag} {label}".strip()  # a cache has no tag
        while (pid := self._hold_unit(folder)) is not None:
            if not waited:
                self.say(f"{head}: being made by another invocation (pid {pid}); waiting for it")
            waited = True
            time.sleep(UNIT_POLL_S)
        try:
            yield
        finally:
            (folder / LOCK_FILE).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _unit(self, folder: Path, tag: str, label: str) -> Iterator[nn.Module | None]:
        """Hold the unit ``folder`` while the block trains it (:meth:`_held`). Yields the
        finished model found once the unit is held (e.g. the one another invocation trained),
        or None: this process trains the unit (resuming what a dead holder left)."""
        with self._held(folder, tag, label):
            # loaded again once held: another invocation may have finished it meanwhile
            yield self._loaded(folder, tag, label)

    def teacher_cache(self, folder: Path, teachers: Sequence[nn.Module], transfer: TransferSet,
                      dcfg: DistillConfig, *, label: str = "") -> None:
        """Make (or check) the teachers' cache of ``transfer`` for ``dcfg``'s views and storage in
        ``folder``, held like a unit, so that an invocation beside this one waits for it instead
        of writing it too. ``distill`` then opens it (same fingerprint). Every cache of the run is
        made here, so what a killed build left in the held folder (its temporary files) is
        removed first."""
        with self._held(folder, "", label):
            for junk in folder.glob(".*.tmp"):
                self.say(f"{label}: removing {junk.name}, left by a build that was stopped")
                junk.unlink(missing_ok=True)
            self.say(f"{label}: teachers' cache ({len(teachers)} teacher(s), {len(transfer)} "
                     f"examples{'' if dcfg.views is None else ', ' + _views_text(dcfg.views)})")
            t = time.perf_counter()
            ensure_cache(list(teachers), transfer.x, folder, dtype=dcfg.cache_dtype,
                         topk=dcfg.cache_topk, device=self.device, views=dcfg.views)
            self.say(f"{label}: teachers' cache ready ({_fmt_s(time.perf_counter() - t)})")

    def hard_model(self, folder: Path, spec: ModelSpec, seed: int, epochs: int, *,
                   transfer: TransferSet | None = None, views: ViewConfig | None = None,
                   lr: float | None = None, early_stopping: int = 0,
                   label: str = "") -> nn.Module:
        """A model trained on hard labels (``train_baseline``): all training data unless
        ``transfer`` is given, on its ``views`` (None: the examples as they are)."""
        tag = self._tag()
        with self._unit(folder, tag, label) as m:
            return m if m is not None else self._train_hard(
                folder, spec, seed, epochs, transfer, views, lr, early_stopping, tag, label)

    def _train_hard(self, folder, spec, seed, epochs, transfer, views, lr, early_stopping, tag,
                    label) -> nn.Module:
        s = self.splits
        transfer = make_transfer_set(s) if transfer is None else transfer
        seen = "" if views is None else f", views {_views_text(views)}"
        self.say(f"{tag} {label}: training on hard labels ({len(transfer)} examples{seen}, "
                 f"{epochs} epochs)")
        t = time.perf_counter()
        seed_everything(seed)  # initial weights
        model = spec.build(s.input_shape, s.n_classes)
        cfg = self.train_config(epochs, seed, lr=lr, early_stopping=early_stopping)
        res = train_baseline(model, transfer, cfg, views=views, val=(s.x_val, s.y_val),
                             run_dir=folder, device=self.device, progress=False)
        return self._finish(folder, res.model, {"role": "hard", "seed": seed,
                                                 "best_epoch": res.best_epoch}, tag, label, t)

    def distilled_model(self, folder: Path, spec: ModelSpec, seed: int, epochs: int,
                        teachers: Sequence[nn.Module], transfer: TransferSet,
                        dcfg: DistillConfig, cache_dir: Path, *, lr: float | None = None,
                        label: str = "") -> nn.Module:
        """A model distilled from ``teachers`` on ``transfer`` (same init as the hard model);
        ``lr`` None: the preset's."""
        tag = self._tag()
        with self._unit(folder, tag, label) as m:
            return m if m is not None else self._train_distilled(
                folder, spec, seed, epochs, teachers, transfer, dcfg, cache_dir, lr, tag, label)

    def _train_distilled(self, folder, spec, seed, epochs, teachers, transfer, dcfg, cache_dir,
                         lr, tag, label) -> nn.Module:
        s = self.splits
        self.say(f"{tag} {label}: distilling ({len(transfer)} examples, {epochs} epochs, "
                 f"T={dcfg.temperature:g}, alpha={dcfg.alpha:g}, {len(teachers)} teacher(s))")
        self.teacher_cache(cache_dir, teachers, transfer, dcfg, label=label)
        t = time.perf_counter()
        seed_everything(seed)
        model = spec.build(s.input_shape, s.n_classes)
        res = distill(
            model, list(teachers), transfer, self.train_config(epochs, seed, lr=lr), dcfg,
            val=(s.x_val, s.y_val), run_dir=folder, cache_dir=cache_dir, device=self.device,
            progress=False,
        )
        return self._finish(folder, res.model, {"role": "distilled", "seed": seed,
                                                 "temperature": dcfg.temperature,
                                                 "alpha": dcfg.alpha, "combine": dcfg.combine},
                            tag, label, t)

    def sweep(self, folder: Path, spec: ModelSpec, seed: int, epochs: int,
              teachers: Sequence[nn.Module], transfer: TransferSet,
              configs: Sequence[DistillConfig], *, label: str = "",
              cache_dir: Path | None = None, lr: float | None = None) -> SweepResult:
        """One student per config (``distill_sweep``: one cache, same start), best on validation.
        ``cache_dir``: the teachers' cache (default ``folder/cache``); ``lr`` None: the preset's.

        Each candidate is a unit of its own (``folder/candidates/T4-a0.9``; a single config
        trains in ``folder`` itself), so an interrupted sweep resumes where it stopped.
        """
        tag = self._tag(len(configs))
        with self._unit(folder, tag, label):  # a finished sweep's candidates are loaded below
            return self._sweep(folder, spec, seed, epochs, teachers, transfer, configs, label,
                               cache_dir, lr, tag)

    def _sweep(self, folder, spec, seed, epochs, teachers, transfer, configs, label, cache_dir,
               lr, tag) -> SweepResult:
        s = self.splits
        if len(configs) == 1 and (done := Run(folder).load_finished(self.device)) is not None:
            c = configs[0]  # distill_sweep retrains a lone candidate: load it here instead
            v = evaluate_logits(predict_logits(done[0], s.x_val, device=self.device), s.y_val)
            self.say(f"{tag} {label}: already trained, loaded")
            return SweepResult(done[0], 0, [Candidate(c.temperature, c.alpha, v["acc"], v["nll"],
                                                      str(folder))])
        names = ", ".join(f"T={c.temperature:g} alpha={c.alpha:g}" for c in configs)
        self.say(f"{tag} {label}: {len(configs)} candidate(s) ({names}), {epochs} epochs, "
                 f"{len(transfer)} examples")
        t = time.perf_counter()
        if len(configs) > 1:  # each candidate a unit, so a helper can train some of them
            self.sweep_candidates(folder, spec, seed, epochs, teachers, transfer, configs,
                                  label=label, cache_dir=cache_dir, lr=lr)
        else:
            self.teacher_cache(folder / "cache" if cache_dir is None else cache_dir, teachers,
                               transfer, configs[0], label=label)

        def make() -> nn.Module:
            seed_everything(seed)
            return spec.build(s.input_shape, s.n_classes)

        res = distill_sweep(make, list(teachers), transfer, self.train_config(epochs, seed, lr=lr),
                            list(configs), val=(s.x_val, s.y_val), run_dir=folder, cache_dir=cache_dir,
                            device=self.device, progress=False,
                            say=lambda m: self.say(f"{tag} {label}: {m}"))
        if len(configs) == 1:  # the single candidate trained in ``folder``: save it there
            Run(folder).finish(res.model, {**data_meta(s), "role": "distilled", "seed": seed},
                               drop_checkpoint=True)
        else:
            for c in res.candidates:
                (Path(c.folder) / "checkpoint.pt").unlink(missing_ok=True)
        best = res.candidates[res.best]
        self.say(f"{tag} {label}: kept T={best.temperature:g} alpha={best.alpha:g}, validation "
                 f"accuracy {100 * best.val_acc:.2f}% ({_fmt_s(time.perf_counter() - t)})")
        self.save_run()
        return res

    def sweep_candidates(self, folder: Path, spec: ModelSpec, seed: int, epochs: int,
                         teachers: Sequence[nn.Module], transfer: TransferSet,
                         configs: Sequence[DistillConfig], *, label: str = "",
                         cache_dir: Path | None = None, lr: float | None = None) -> None:
        """Train the candidates of a sweep of several ``configs`` (in their order), each a unit
        in ``folder/candidates/<name>``, trained like ``distill_sweep`` trains it (same seed,
        start and cache), which then loads them. A ``--helper`` calls this with the configs
        reversed, beside the main invocation's :meth:`sweep`, which holds only ``folder``."""
        cache_dir = folder / "cache" if cache_dir is None else cache_dir
        self.teacher_cache(cache_dir, teachers, transfer, configs[0], label=label)
        for cfg in configs:
            name = candidate_name(cfg)
            self.distilled_model(folder / "candidates" / name, spec, seed, epochs, teachers,
                                 transfer, cfg, cache_dir, lr=lr,
                                 label=f"{label}, candidate {name}")


def _views_text(v: ViewConfig) -> str:
    on = {k: x for k, x in v.as_dict().items() if k not in ("views", "seed") and x}
    n = "unbounded" if v.views is None else f"V={v.views}"
    return ", ".join(f"{k} {x:g}" if not isinstance(x, bool) else k for k, x in on.items()) + \
        f" ({n})"


# -------------------------------------------------------------------- evaluation


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    """Share of ``x`` (N, ...) classified as ``y`` (N,) at T = 1."""
    return metrics.accuracy(predict_logits(model, x, device=device), y)


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
    probs = torch.softmax(logits.double(), -1)
    acc = metrics.accuracy(probs, y)
    return {"test_acc": acc, "test_errors": round((1 - acc) * len(y)),
            "test_nll": metrics.nll(probs, y), "n_test": int(len(y))}


def summary(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), n and the values themselves."""
    v = [float(x) for x in values]
    if not v:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(v), "values": v}


def test_correct(model: nn.Module, ctx: Context) -> np.ndarray:
    """(N,) bool: which test examples ``model`` classifies right (for paired bootstraps)."""
    return test_predictions(model, ctx) == ctx.splits.y_test.numpy()


def test_predictions(model: nn.Module, ctx: Context) -> np.ndarray:
    """(N,) int: the model's top class on each test example."""
    return predict_logits(model, ctx.splits.x_test, device=ctx.device).argmax(1).numpy()


def curve(folder: Path) -> list[float]:
    """Validation accuracy after each epoch of a unit (empty when it logged none)."""
    return [r["val_acc"] for r in Run(folder).log() if r.get("val_acc") is not None]


def late_change(values: Sequence[float], share: float = 0.2) -> float | None:
    """Validation accuracy gained over the last ``share`` of the epochs (convergence check):
    last value minus the value at 1 - share of the run; None for curves under 5 epochs."""
    if len(values) < 5:
        return None
    k = max(1, round(share * len(values)))
    return float(values[-1] - values[-1 - k])


def gap_share_ci(ctx: Context, worse: np.ndarray, better: np.ndarray, ours: np.ndarray,
                 *, seed: int = 0) -> list[float]:
    """95% interval of ``share_of_gap`` from per-example correctness: ``worse`` (R1, N) and
    ``ours`` (R2, N) are models over seeds (rows resampled), ``better`` (R3, N) the model(s) whose
    level is the goal (rows resampled too when more than one); test examples resampled jointly."""

    def stat(w, b, o):
        return share_of_gap(w.mean(), b.mean(), o.mean())

    ci = metrics.paired_bootstrap_ci(
        stat, [worse, better, ours], n_boot=ctx.preset.n_boot, seed=seed,
        replicates=[len(worse) > 1, len(better) > 1, len(ours) > 1])
    return ci.as_list()


def metrics_history(folder: Path) -> list[dict]:
    """The shared loop's per-epoch records of a unit (empty when none were written)."""
    return Run(folder).log()


def _adds_teachers(have: list[dict], want: list[dict] | None) -> bool:
    """Whether E1's rows ``want`` only add teacher candidates to ``have`` (as read from JSON):
    the same rows in the same order, each keeping every teacher it had. Teachers and the students
    distilled from them live in folders named after the teacher, so a new candidate only adds
    models; a field added to the recipes later counts as absent while at its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TeacherRecipe)
                if f.default is not dataclasses.MISSING}

    def norm(t: dict) -> dict:
        return {k: v for k, v in t.items() if not (k in defaults and v == defaults[k])}

    if want is None or [r["name"] for r in have] != [r["name"] for r in want]:
        return False
    return all(all(norm(t) in [norm(u) for u in new["teachers"]] for t in old["teachers"])
               for old, new in zip(have, want, strict=True))


def _other_holder(path: Path) -> int | None:
    """The pid written in the mark ``path`` when another live invocation holds it; None when the
    mark is absent, unreadable, this process's own or stale."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


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
    # After a reboot or a new session the number may belong to another program: on Linux, a
    # process that is not Python is not a run of this script.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read()
    except OSError:
        return True


def _fmt_s(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def widths_name(widths: Sequence[int]) -> str:
    return "x".join(str(w) for w in widths)
