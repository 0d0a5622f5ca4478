"""Export a saved model as a file that runs without ensemble-kd: TorchScript, or ONNX.

A TorchScript file needs only ``torch`` (``torch.jit.load(path)``); an ONNX file needs only an ONNX
runtime. Both take ``(B, *input_shape)`` float32 inputs and return ``(B, n_classes)`` logits.
A TorchScript file also carries ``meta.json`` (class names, input shape, the data set) as an extra
file: ``torch.jit.load(path, _extra_files={"meta.json": ""})`` fills it in.

ONNX export needs the ``onnx`` package (the optional extra ``pip install 'ensemble-kd[onnx]'``);
without it, :func:`export_model` says so in one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model
from .io import atomic_path, check_out_file

FORMATS = ("torchscript", "onnx")
ONNX_HINT = ("ONNX export needs the onnx package, which is not installed: "
             "pip install 'ensemble-kd[onnx]' (or pip install onnx)")


def check_export_target(out: str | os.PathLike, fmt: str, *, overwrite: bool = False) -> Path:
    """Check the format and the output file before anything is loaded or written.

    Raises:
        ValueError: unknown format, ONNX without the ``onnx`` package, ``out`` is a folder, or
            ``out`` exists and ``overwrite`` is False.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ValueError(ONNX_HINT)
    return check_out_file(out, overwrite)


def _example_input(meta: dict, spec: dict) -> torch.Tensor:
    shape = meta.get("input_shape") or spec.get("input_shape")
    if not isinstance(shape, (list, tuple)) or not shape:
        raise ValueError("the model file does not record its input shape")
    return torch.rand(2, *[int(s) for s in shape], generator=torch.Generator().manual_seed(0))


def _save_torchscript(model: nn.Module, example: torch.Tensor, out: Path, info: dict) -> None:
    # torch >= 2.10 marks TorchScript deprecated (for torch.export); the format is still what
    # torch.jit.load reads everywhere, so the warnings are silenced, not passed on to the user
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example, check_trace=True).eval()
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"meta.json": json.dumps(info)})


def export_model(model_path: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """Export the ensemble-kd model file ``model_path`` to ``out`` in format ``fmt``.

    Args:
        model_path: a ``model.pt`` written by ensemble-kd (a student, teacher or baseline).
        fmt: ``"torchscript"`` or ``"onnx"``.
        out: the file to write (atomically); its folder is created if missing.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        ValueError: a bad target (see :func:`check_export_target`), or a model file that is not
            an ensemble-kd model (a :class:`~ensemble_kd.io.FormatError`).
        FileNotFoundError: no such model file.
    """
    out = check_export_target(out, fmt, overwrite=overwrite)
    model, meta = load_model(model_path, "cpu")
    spec = getattr(model, "spec", {}) or {}
    example = _example_input(meta, spec)
    info = {"format": "ensemble-kd/exported-model", "input_shape": list(example.shape[1:]),
            "n_classes": meta.get("n_classes", spec.get("n_classes")),
            "class_names": meta.get("class_names"), "dataset": meta.get("dataset"),
            "role": meta.get("role"), "output": "logits"}
    if fmt == "torchscript":
        _save_torchscript(model, example, out, info)
        return out
    with atomic_path(out) as tmp:
        try:
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                     "logits": {0: "batch"}},
                              dynamo=False)
        except Exception as e:  # the exporter's own errors are long and many-lined
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{model_path}: ONNX export failed: {first[:200]}") from None
    return out
