"""Saving and loading models and training state, safely.

A saved model is a ``torch.save`` dict of tensors and strings only: the architecture is a JSON
``spec`` (see :mod:`ensemble_kd.models`), never a pickled class, and loading uses
``weights_only=True``, so a file from a stranger cannot run code. Writes are atomic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from .factories import ImportNotAllowed, model_from_any_spec, scoped_allowance
from .io import FormatError, load_tensors, save_tensors

MODEL_FORMAT = "ensemble-kd/model"
CHECKPOINT_FORMAT = "ensemble-kd/train-checkpoint"
# Format versions this code writes. Model files carried ``version`` 1 from the start; checkpoints of
# ensemble-kd 0.1.0 carried none and have the layout of version 1 (read as such). A file of a newer
# version is refused, never misread.
MODEL_VERSION = 1
CHECKPOINT_VERSION = 1


def _check_version(path, obj: dict, supported: int, what: str) -> None:
    version = obj.get("version", 1)
    if not isinstance(version, int) or version > supported:
        raise FormatError(
            f"{path}: {what} of format version {version!r}, newer than this ensemble-kd reads "
            f"(<= {supported}); upgrade ensemble-kd to use it"
        )


def save_model(path: str | os.PathLike, model: nn.Module, meta: dict | None = None) -> None:
    """Save a model built by :func:`ensemble_kd.models.build_model` with JSON metadata.

    Args:
        path: destination file (written atomically).
        model: a module with a ``spec`` attribute.
        meta: JSON-able facts stored beside the weights (data fingerprint, class names, subset...).
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError(
            "only models built by ensemble_kd.models.build_model (which carry a 'spec') can be saved"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors(
        path,
        {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "spec": json.dumps(spec),
            "meta": json.dumps(meta or {}),
            "state_dict": state,
        },
    )


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    allow_imports: Collection[str] | None = None,
) -> tuple[nn.Module, dict]:
    """Load a model saved by :func:`save_model`, in eval mode.

    A model whose spec names an import path (``pkg.module:function``) is rebuilt by importing that
    module only when ``allow_imports`` allows it (None: the modules of the enclosing
    :func:`~ensemble_kd.factories.allowing_imports` block, none outside one).

    Returns:
        (model, meta).

    Raises:
        FileNotFoundError: no such file.
        FormatError: truncated/corrupt/unsafe file, not an ensemble-kd model, or weights that do not
            fit the stated architecture.
        ImportNotAllowed: the spec names a module that was not allowed (nothing is imported).
    """
    obj = load_tensors(path)
    if obj.get("format") != MODEL_FORMAT:
        raise FormatError(f"{path}: not an ensemble-kd model file (format {obj.get('format')!r})")
    _check_version(path, obj, MODEL_VERSION, "a model file")
    try:
        spec = json.loads(obj["spec"])
        meta = json.loads(obj.get("meta", "{}"))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: malformed model file ({e})") from None
    try:
        allowed = scoped_allowance() if allow_imports is None else allow_imports
        model = model_from_any_spec(spec, allowed)
    except ImportNotAllowed as e:
        raise ImportNotAllowed(f"{path}: {e}") from None
    except ValueError as e:  # an unknown builder, a factory that fails
        raise FormatError(f"{path}: the model cannot be rebuilt: {e}") from None
    try:
        model.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError) as e:
        raise FormatError(f"{path}: malformed model file ({e})") from None
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise FormatError(f"{path}: weights do not match the architecture: {first[:200]}") from None
    return model.to(device).eval(), meta


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write a training checkpoint (model/optimizer/scheduler state + counters) atomically."""
    save_tensors(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state})


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint written by :func:`save_checkpoint` (safe, weights only)."""
    obj = load_tensors(path)
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{path}: not an ensemble-kd training checkpoint")
    _check_version(path, obj, CHECKPOINT_VERSION, "a training checkpoint")
    return obj


def model_meta(path: str | os.PathLike) -> dict:
    """The metadata of a saved model without building it."""
    obj = load_tensors(Path(path))
    if obj.get("format") != MODEL_FORMAT:
        raise FormatError(f"{path}: not an ensemble-kd model file")
    _check_version(path, obj, MODEL_VERSION, "a model file")
    return {"spec": json.loads(obj["spec"]), **json.loads(obj.get("meta", "{}"))}
