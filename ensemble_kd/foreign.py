"""Teachers trained elsewhere: TorchScript files, or state dicts with the function that builds them.

``distill --teacher-model FILE ...`` distils such files like teachers trained here. A file is one of

* a TorchScript archive (``torch.jit.save``): loaded by TorchScript, which runs no Python code;
* an ensemble-kd model file (``model.pt`` of a run): loaded as usual;
* a state dict (``torch.save(model.state_dict(), FILE)``, or ``{"state_dict": ...}``), read with
  the safe unpickler (tensors only): its architecture is a :class:`~ensemble_kd.ensemble.ModelSpec`
  the caller names (``--teacher-arch pkg.module:function``).

Every teacher is run once on zeros to check that it maps the data's inputs to one logit per class.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from torch import nn

from .checkpoint import MODEL_FORMAT, load_model
from .ensemble import ModelSpec
from .factories import check_output
from .io import FormatError, load_tensors


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled code)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _state_dict(obj: dict) -> dict | None:
    """The tensors of a plain state dict (possibly under ``"state_dict"``), or None."""
    inner = obj.get("state_dict", obj)
    if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
        return inner
    return None


def load_foreign_teacher(
    path: str | os.PathLike,
    input_shape: Sequence[int],
    n_classes: int,
    *,
    spec: ModelSpec | None = None,
    allow_imports: Collection[str] = (),
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a teacher trained elsewhere, checked against the data's input shape and class count.

    Args:
        path: a TorchScript archive, an ensemble-kd model file or a state dict.
        input_shape, n_classes: of the data the teacher will be distilled on.
        spec: the architecture that builds a state dict (needed for state dicts only).
        allow_imports: modules an import-path architecture (of ``spec`` or of an ensemble-kd
            model file) may import.
        device: where to put the teacher.

    Returns:
        The teacher, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        FormatError: unreadable file, a state dict without ``spec`` or whose tensors do not fit it.
        ValueError: the teacher does not map the inputs to ``n_classes`` logits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": noise for a user
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise FormatError(f"{path}: not a loadable TorchScript file "
                              f"({type(e).__name__})") from None
    else:
        obj = load_tensors(path)
        if obj.get("format") == MODEL_FORMAT:
            model = load_model(path, "cpu", allow_imports=allow_imports)[0]
        else:
            state = _state_dict(obj)
            if state is None:
                raise FormatError(f"{path}: neither TorchScript, an ensemble-kd model nor a state "
                                  "dict of tensors")
            model = _from_state_dict(path, state, spec, input_shape, n_classes, allow_imports)
    check_output(model, str(path), input_shape, n_classes)
    return model.to(device).eval()


def _from_state_dict(path: Path, state: dict, spec: ModelSpec | None, input_shape: Sequence[int],
                     n_classes: int, allow_imports: Collection[str]) -> nn.Module:
    if spec is None:
        raise FormatError(f"{path}: a state dict; pass --teacher-arch naming the function that "
                          "builds its model (pkg.module:function)")
    model = spec.build(input_shape, n_classes, allow_imports=allow_imports)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise FormatError(f"{path}: the state dict does not fit {spec.arch!r}: {first}") from None
    return model
