"""The models and files that flags name (``--teachers``, ``--teacher-model``, ``--generalist``,
``--subsets``), read and checked against the data before any work starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..data import Splits
from ..ensemble import find_teachers, load_teachers
from ..foreign import load_foreign_teacher
from ..io import read_json
from .context import Ctx


def read_teachers(ctx: Ctx, splits: Splits, args: argparse.Namespace) -> list[torch.nn.Module]:
    """The teachers of ``distill`` that fit ``splits``: those in ``--teachers`` (a run folder, or a
    folder of teacher_<k>/), or the files of ``--teacher-model`` (trained elsewhere; state dicts are
    built by the ``--teacher-arch`` architectures, cycled)."""
    if getattr(args, "teacher_model", None):
        specs = ctx.cfg.teacher_specs()
        return [
            load_foreign_teacher(path, splits.input_shape, splits.n_classes,
                                 spec=specs[k % len(specs)], allow_imports=ctx.allow_imports,
                                 device=ctx.device)
            for k, path in enumerate(args.teacher_model)
        ]
    src = Path(args.teachers)
    paths = find_teachers(src / "teachers" if (src / "teachers").is_dir() else src)
    return load_teachers(paths, ctx.device, splits=splits, allow_imports=ctx.allow_imports)[0]


def check_model_data(path, meta: dict, splits: Splits) -> None:
    """Refuse a saved model (its ``meta``) made for other classes, inputs or data than ``splits``."""
    if meta.get("n_classes") not in (None, splits.n_classes):
        raise ValueError(f"{path}: model has {meta['n_classes']} classes but {splits.name!r} has "
                         f"{splits.n_classes}")
    if meta.get("input_shape") not in (None, list(splits.input_shape)):
        raise ValueError(f"{path}: model takes inputs of shape {tuple(meta['input_shape'])} but "
                         f"{splits.name!r} has inputs of shape {splits.input_shape}")
    if meta.get("data_fingerprint") not in (None, splits.fingerprint()):
        raise ValueError(f"{path}: model was trained on other data ({meta.get('dataset')!r}) than "
                         f"the data set given ({splits.name!r})")


def read_subsets(path: str | Path) -> list[list[int]]:
    """A JSON list of class lists, or ``{"subsets": [...]}`` (not yet checked against the classes)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"subsets file {path} does not exist")
    obj = read_json(path)
    subsets = obj.get("subsets") if isinstance(obj, dict) else obj
    if not isinstance(subsets, list) or not all(isinstance(s, list) for s in subsets):
        raise ValueError(f"{path}: expected a JSON list of class lists (or {{\"subsets\": [...]}})")
    return subsets


def read_generalist(ctx: Ctx, splits: Splits, args: argparse.Namespace):
    """``--generalist`` checked against the data, and ``--subsets`` (None: from its confusion)."""
    generalist, meta = load_model(args.generalist, ctx.device, allow_imports=ctx.allow_imports)
    check_model_data(args.generalist, meta, splits)
    if not isinstance(getattr(generalist, "head", None), torch.nn.Linear):
        raise ValueError(f"{args.generalist}: specialists replace the generalist's final nn.Linear "
                         "called 'head', and this model has none")
    subsets = None
    if args.subsets:
        from specialists.subsets import validate_subsets

        subsets = validate_subsets(read_subsets(args.subsets), splits.n_classes)
    return generalist, subsets
