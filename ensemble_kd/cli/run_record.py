"""A run folder's ``config.json``: the one place that writes and reads it.

The record holds the command, the package version that wrote it and the resolved configuration::

    {"format": "ensemble-kd/run-config", "format_version": 2,
     "command": "run", "version": "0.2.0", "config": {...}}

Format version 1 is what ensemble-kd 0.1.0 wrote: the same record without the two format keys.
A record of a newer (or unknown) format version is refused, never guessed at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import __version__
from .. import distributed as dist
from ..io import FormatError, atomic_write_json, read_json
from .config import SWEEP_FIELDS, RunConfig, normalise_sweep
from .parser import UsageError

FORMAT = "ensemble-kd/run-config"
FORMAT_VERSION = 2
NAME = "config.json"
IGNORED_ON_RESUME = frozenset({"quiet", "device"})  # may differ between a run and its resumption
# Options added after records of this format were first written, with the value that does what the
# older versions did; a record without them reads as having that value.
ADDED_OPTIONS = {"image_size": None, "transfer_data": None, "view_shift": 0, "view_crop_padding": 0,
                 "view_flip": False, "view_mixup": 0.0, "view_cutmix": 0.0, "view_noise": 0.0,
                 "views": 1,
                 # the teachers' own training options; unset (None): the shared ones, as before
                 "teacher_batch_size": None, "teacher_optimizer": None, "teacher_lr": None,
                 "teacher_weight_decay": None, "teacher_mixup": None}
# Options added after format version 2 was fixed: left out of the record while unset (None), so
# the record of a run that does not use them is what older versions wrote.
OMITTED_WHEN_UNSET = frozenset({"teacher_kwargs", "student_kwargs", "teacher_batch_size",
                                "teacher_optimizer", "teacher_lr", "teacher_weight_decay",
                                "merge_epochs", "merge_lr", "merge_batch_size",
                                "merge_temperature", "merge_alpha", "merge_control",
                                "merge_views", "specialist_calibration", "teacher_mixup"})


def run_record(command: str, cfg: RunConfig) -> dict:
    """The JSON record of a run of ``command`` with ``cfg``, in the current format."""
    config = {k: v for k, v in vars(cfg).items() if not (k in OMITTED_WHEN_UNSET and v is None)}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "command": command,
            "version": __version__, "config": config}


def read_run_record(path: str | Path) -> dict:
    """Read a run record of any format version this package knows, as the current format.

    Raises:
        FormatError: not a run record, a malformed one, or one of a newer format version (the
            message says to upgrade ensemble-kd).
    """
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: not an ensemble-kd run record")
    if "format" in obj:
        if obj["format"] != FORMAT:
            raise FormatError(f"{path}: not an ensemble-kd run record (format {obj['format']!r})")
        version = obj.get("format_version")
    else:
        version = 1  # ensemble-kd 0.1.0
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise FormatError(
            f"{path}: run record of format version {version}, newer than this ensemble-kd "
            f"{__version__} reads (up to {FORMAT_VERSION}); upgrade ensemble-kd to use this run"
        )
    if version not in (1, 2) or isinstance(version, bool):
        raise FormatError(f"{path}: run record of unknown format version {version!r}")
    if not isinstance(obj.get("config"), dict) or not isinstance(obj.get("command"), str):
        raise FormatError(f"{path}: malformed ensemble-kd run record (no command or config)")
    config = {**ADDED_OPTIONS, **obj["config"]}
    for name in SWEEP_FIELDS:  # version 1 stored one number; now a list (or "auto")
        if name in config:
            try:
                config[name] = normalise_sweep(name, config[name])
            except ValueError as e:
                raise FormatError(f"{path}: {e}") from None
    return {**obj, "config": config, "format": FORMAT, "format_version": FORMAT_VERSION}


def saved_config(run: Path) -> dict:
    """The configuration recorded in ``run/config.json``, or {} when the folder has none."""
    path = run / NAME
    return read_run_record(path)["config"] if path.exists() else {}


def _check_resumable(path: Path, out: Path, cfg: RunConfig, command: str) -> None:
    """Refuse to resume a run of another command or with other settings."""
    old = read_run_record(path)
    new = vars(cfg)
    diff = sorted(
        k for k in set(old["config"]) | set(new)
        if k not in IGNORED_ON_RESUME and old["config"].get(k) != new.get(k)
    )
    if old["command"] != command or diff:
        raise UsageError(
            f"--resume: {out} holds a {old['command']!r} run with other settings "
            f"({', '.join(diff) or 'command'}); use a new --out"
        )


def prepare_out(out: Path, cfg: RunConfig, command: str, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder, refusing to mix runs; save the resolved config.

    Under torchrun every rank makes the (read-only) checks, rank 0 alone writes, the others wait.
    """
    path = out / NAME
    action = "new"
    if path.exists():
        if overwrite:
            action = "overwrite"
        elif resume:
            _check_resumable(path, out, cfg, command)
            action = "resume"
        else:
            raise UsageError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
    elif out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise UsageError(f"{out} exists and is not empty; choose a new --out or pass --overwrite")
    dist.barrier()  # every rank has looked before rank 0 changes anything
    if dist.is_main() and action != "resume":
        if action == "overwrite":
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, run_record(command, cfg))
    dist.barrier()
