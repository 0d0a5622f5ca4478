"""The commands whose product is one file, not a run folder: ``predict`` and ``export``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..ensemble import find_teachers, load_teachers
from ..export import export_model
from ..io import check_out_file
from ..predict import predict_logits
from .context import Ctx, load_data
from .inputs import check_model_data


def cmd_predict(ctx: Ctx, args: argparse.Namespace) -> int:
    """``predict``: the probabilities of ``--model`` (or the mean of ``--teachers``') on a split.

    Writes ``--out`` with the keys :func:`specialists.predictions.save_predictions` documents
    (``probs`` (N, C), ``labels`` (N,), ``class_names`` (C,)), which ``confusion-report
    --predictions`` reads. Every split of the data sets ensemble-kd reads is labelled.
    """
    from specialists.predictions import save_predictions

    out = Path(args.out)
    check_out_file(out, args.overwrite)
    splits = load_data(ctx.cfg)
    if args.model:
        model, meta = load_model(args.model, ctx.device)
        check_model_data(args.model, meta, splits)
        models = [model]
    else:
        src = Path(args.teachers)
        folder = src / "teachers" if (src / "teachers").is_dir() else src
        models, _ = load_teachers(find_teachers(folder), ctx.device, splits=splits)
    x, y = getattr(splits, f"x_{args.split}"), getattr(splits, f"y_{args.split}")
    if len(y) == 0:
        raise ValueError(f"the {args.split} split of {splits.name!r} is empty")
    probs = torch.stack(
        [torch.softmax(predict_logits(m, x, device=ctx.device), -1) for m in models]
    ).mean(0)
    save_predictions(out, probs.numpy(), y.numpy(), list(splits.class_names))
    ctx.say(f"wrote the predictions of {len(models)} model(s) on {len(y)} {args.split} examples "
            f"of {splits.name} to {out}")
    return 0


def cmd_export(ctx: Ctx, args: argparse.Namespace) -> int:
    """``export``: ``--model`` as a TorchScript or ONNX file at ``--out``."""
    path = export_model(args.model, args.format, args.out, overwrite=args.overwrite)
    ctx.say(f"wrote {path} ({args.format}; inputs (B, ...) float32 -> logits (B, n_classes))")
    return 0
