"""Specialists on disk and in use: save and load one, train or load a folder of them, predict.

Folder layout written by :func:`train_specialists`::

    out_dir/subsets.json              the subsets, their class names, the data fingerprint
    out_dir/specialist_<m>/model.pt   the trained specialist (dustbin correction included)
    out_dir/specialist_<m>/checkpoint.pt, metrics.jsonl   the shared loop's run folder

How one specialist is built and trained is :mod:`specialists.training`'s job; its names are
re-exported here, where they lived before.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from torch import nn

from ensemble_kd.cache import teachers_fingerprint
from ensemble_kd.checkpoint import load_model, save_model
from ensemble_kd.data import Splits
from ensemble_kd.ensemble import data_meta
from ensemble_kd.io import FormatError, atomic_write_json, read_json
from ensemble_kd.predict import predict_logits, resolve_device
from ensemble_kd.run import Run
from ensemble_kd.train import TrainConfig

from .subsets import validate_subsets
from .training import (
    VECTOR,
    Specialist,
    SpecialistConfig,
    build_specialist,
    calibrate_specialist,
    train_specialist,
)

__all__ = [
    "SUBSETS_FILE",
    "Specialist",
    "SpecialistConfig",
    "build_specialist",
    "calibrate_specialist",
    "load_specialist",
    "load_specialists",
    "save_specialist",
    "specialist_dir",
    "specialist_probs",
    "train_specialist",
    "train_specialists",
]

SUBSETS_FILE = "subsets.json"


def save_specialist(
    path: str | os.PathLike, specialist: Specialist, meta: dict | None = None
) -> None:
    """Save a specialist (weights with the correction, subset, correction, history) atomically.

    Args:
        path: destination ``.pt`` file.
        specialist: what to save; its ``meta`` is stored too, updated by ``meta``.
        meta: JSON-able facts (data fingerprint, class names, generalist fingerprint, ...).
    """
    full = {
        **specialist.meta,
        **(meta or {}),
        "role": "specialist",
        "subset": [int(c) for c in specialist.subset],
        "dustbin_correction": float(specialist.dustbin_correction),
        "dustbin_calibration": specialist.calibration,
        "calibration_temperature": float(specialist.temperature),
        "history": specialist.history,
    }
    save_model(path, specialist.model, full)


def load_specialist(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    allow_imports: Collection[str] | None = None,
) -> Specialist:
    """Load a specialist saved by :func:`save_specialist`, in eval mode.

    ``allow_imports``: modules its spec may import, as for
    :func:`ensemble_kd.checkpoint.load_model` (None: those of the enclosing ``allowing_imports``).

    Raises:
        FileNotFoundError: no such file.
        FormatError: not a model file, no valid subset or correction in its metadata, or a head
            whose size is not ``len(subset) + 1``.
    """
    model, meta = load_model(path, device, allow_imports=allow_imports)
    subset = meta.get("subset")
    if not (
        isinstance(subset, list)
        and subset
        and all(isinstance(c, int) and not isinstance(c, bool) for c in subset)
    ):
        raise FormatError(f"{path}: not a specialist (its metadata has no list of subset classes)")
    c = meta.get("dustbin_correction")
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c):
        raise FormatError(f"{path}: not a specialist (dustbin_correction is {c!r})")
    head = getattr(model, "head", None)
    n_out = head.out_features if isinstance(head, nn.Linear) else None
    if n_out != len(subset) + 1:
        raise FormatError(
            f"{path}: the head has {n_out} outputs but the subset has {len(subset)} classes "
            f"(expected {len(subset) + 1} with the dustbin)"
        )
    # Files written before the calibration was recorded used a (wrong) closed form.
    how = str(meta.get("dustbin_calibration", "unrecorded"))
    t = meta.get("calibration_temperature", 1.0)  # absent before vector scaling existed
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (math.isfinite(t) and t > 0):
        raise FormatError(f"{path}: not a specialist (calibration_temperature is {t!r})")
    return Specialist(model, list(subset), float(c), list(meta.get("history", [])), meta, how,
                      float(t))


def specialist_dir(out_dir: str | os.PathLike, m: int) -> Path:
    return Path(out_dir) / f"specialist_{m}"


def train_specialists(
    generalist: nn.Module,
    subsets: Sequence[Sequence[int]],
    splits: Splits,
    train_config: TrainConfig,
    spec_config: SpecialistConfig | None,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    ranks: tuple[int, int] = (0, 1),
) -> list[Specialist]:
    """Train one specialist per subset, each independently in ``out_dir/specialist_<m>/``.

    Resumable: a specialist whose ``model.pt`` exists is loaded (after checking that it belongs to
    this subset, data and generalist), an interrupted one continues from its checkpoint. A loaded
    one saved under another calibration than ``spec_config.calibration = "vector"`` asks for is
    calibrated now and saved again (the same weights below the head).

    Args:
        generalist: the trained generalist.
        subsets: M class subsets (may overlap).
        splits: the data the generalist was trained on.
        train_config, spec_config: as for :func:`train_specialist` (same for every specialist).
        out_dir: receives ``subsets.json`` and ``specialist_<m>/``.
        device, progress: as for :func:`ensemble_kd.train.train`.
        ranks: (rank, world size): this process trains specialists m with m % world == rank.

    Returns:
        This process's specialists (all M when world size is 1), in subset order.
    """
    cfg = (spec_config or SpecialistConfig()).validate()
    subsets = validate_subsets(subsets, splits.n_classes)
    rank, world = ranks
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"ranks must be (rank, world) with 0 <= rank < world, got {ranks}")
    out = Path(out_dir)
    base = data_meta(splits)
    gen_fp = teachers_fingerprint([generalist])
    names = splits.class_names
    manifest = {
        "subsets": subsets,
        "subset_names": [[names[c] for c in s] for s in subsets],
        "class_names": list(names),
        "n_classes": splits.n_classes,
        "dataset": splits.name,
        "data_fingerprint": base["data_fingerprint"],
        "generalist_fingerprint": gen_fp,
    }
    manifest_path = out / SUBSETS_FILE
    if manifest_path.exists():
        old = read_json(manifest_path)
        for key in ("subsets", "data_fingerprint", "generalist_fingerprint"):
            if old.get(key) != manifest[key]:
                raise ValueError(
                    f"{manifest_path} belongs to a run with other {key.replace('_', ' ')}; "
                    "use a new output folder"
                )
    if rank == 0:  # one writer of the shared manifest under torchrun
        atomic_write_json(manifest_path, manifest)

    result = []
    for m, subset in enumerate(subsets):
        if m % world != rank:
            continue
        folder = specialist_dir(out, m)
        run = Run(folder)  # finished: load it; else train (resuming from its checkpoint)
        path = run.model_path
        if run.finished():
            sp = load_specialist(path, device)
            _check_resumed(path, sp, subset, base["data_fingerprint"], gen_fp)
            if cfg.calibration == "vector" and sp.calibration != VECTOR:
                # trained under another calibration: vector scaling refits every bias, so what
                # the head held before does not matter; the file is replaced atomically
                sp = calibrate_specialist(sp, splits.x_val, splits.y_val, device=device)
                sp.meta = {**sp.meta, "specialist_config": dataclasses.asdict(cfg)}
                save_specialist(path, sp)
            result.append(sp)
            continue
        sp = train_specialist(
            generalist,
            subset,
            splits,
            train_config,
            cfg,
            run_dir=folder,
            device=device,
            progress=progress,
            desc=f"specialist {m + 1}/{len(subsets)}",
        )
        sp.meta = {
            **base,
            "generalist_fingerprint": gen_fp,
            "index": m,
            "subset_names": [names[c] for c in subset],
            "specialist_config": dataclasses.asdict(cfg),
            "train_config": dataclasses.asdict(train_config),
        }
        save_specialist(path, sp)
        result.append(sp)
    return result


def _check_resumed(
    path: Path, sp: Specialist, subset: list[int], data_fp: str, gen_fp: str
) -> None:
    if sp.subset != subset:
        raise ValueError(f"{path} is a specialist for {sp.subset}, not {subset}; use a new folder")
    if sp.meta.get("data_fingerprint") != data_fp:
        raise ValueError(f"{path} was trained on other data; use a new folder")
    if sp.meta.get("generalist_fingerprint") != gen_fp:
        raise ValueError(f"{path} was trained from another generalist; use a new folder")


def load_specialists(
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    allow_imports: Collection[str] | None = None,
) -> list[Specialist]:
    """Load every specialist that :func:`train_specialists` wrote to ``out_dir``, in subset order
    (``allow_imports`` as for :func:`load_specialist`).

    Raises:
        FileNotFoundError: no ``subsets.json`` or a specialist's ``model.pt`` is missing.
        FormatError: a specialist's subset differs from the one in ``subsets.json``.
    """
    out = Path(out_dir)
    if not (out / SUBSETS_FILE).exists():
        raise FileNotFoundError(
            f"{out}: no {SUBSETS_FILE} (not a folder written by train_specialists)"
        )
    subsets = read_json(out / SUBSETS_FILE).get("subsets")
    if not isinstance(subsets, list) or not subsets:
        raise FormatError(f"{out / SUBSETS_FILE}: no subsets listed")
    specialists = []
    for m, subset in enumerate(subsets):
        path = specialist_dir(out, m) / "model.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: specialist {m} has not been trained (yet)")
        sp = load_specialist(path, device, allow_imports=allow_imports)
        if sp.subset != subset:
            raise FormatError(f"{path}: subset {sp.subset} differs from {subset} in {SUBSETS_FILE}")
        specialists.append(sp)
    return specialists


def specialist_probs(
    specialists: Sequence[Specialist],
    x: torch.Tensor,
    device: str | torch.device | None = None,
) -> list[torch.Tensor]:
    """Each specialist's probabilities on ``x`` (softmax of the corrected logits, T = 1).

    Args:
        specialists: M specialists.
        x: (N, *input_shape) inputs.
        device: where to run (the models are moved there); default each model's device.

    Returns:
        M float32 CPU tensors, the m-th (N, |S_m| + 1) with the dustbin last.
    """
    out = []
    dev = None if device is None else resolve_device(device)
    for m, sp in enumerate(specialists):
        model = sp.model if dev is None else sp.model.to(dev)
        logits = predict_logits(model, x, device=dev)  # (N, |S_m|+1)
        if logits.shape[-1] != len(sp.subset) + 1:
            raise ValueError(
                f"specialists[{m}] has {logits.shape[-1]} outputs but its subset has "
                f"{len(sp.subset)} classes (expected {len(sp.subset) + 1})"
            )
        out.append(torch.softmax(logits, dim=-1))
    return out
