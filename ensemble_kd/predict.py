"""The one place that turns a model (or several) into logits and probabilities."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device(device)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor | torch.utils.data.Dataset,
    *,
    batch_size: int = 2048,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Logits of ``model`` on every input, in eval mode, as float32 on the CPU.

    Args:
        model: maps (B, *input_shape) to (B, C).
        x: (N, *input_shape) tensor, or a Dataset of ``x`` or ``(x, y)`` items.
        batch_size: inputs per forward pass.
        device: where to run (the model is moved there); default the model's device.

    Returns:
        (N, C) float32 logits.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = resolve_device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    outs = []
    try:
        if isinstance(x, torch.Tensor):
            for i in range(0, len(x), batch_size):
                outs.append(model(x[i : i + batch_size].to(device)).float().cpu())
        else:
            loader = torch.utils.data.DataLoader(x, batch_size=batch_size, shuffle=False)
            for item in loader:
                xb = item[0] if isinstance(item, (tuple, list)) else item
                outs.append(model(xb.to(device)).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("no inputs to predict on")
    return torch.cat(outs)


def predict_probs(model: nn.Module, x, **kwargs) -> torch.Tensor:
    """Probabilities at T = 1, (N, C)."""
    return torch.softmax(predict_logits(model, x, **kwargs), dim=-1)


def ensemble_logits(models: Sequence[nn.Module], x, **kwargs) -> torch.Tensor:
    """Stacked logits of several models, (K, N, C)."""
    return torch.stack([predict_logits(m, x, **kwargs) for m in models])


def ensemble_probs(models: Sequence[nn.Module], x, **kwargs) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' probabilities, (N, C)."""
    return torch.softmax(ensemble_logits(models, x, **kwargs), dim=-1).mean(0)


@torch.no_grad()
def inference_ms(
    models: Sequence[nn.Module], x: torch.Tensor, *, device: str | torch.device = "cpu",
    repeats: int = 20,
) -> float:
    """Median wall milliseconds to run every model in ``models`` on the batch ``x`` (eval mode).

    The cost of predicting with an ensemble (all members) or a single model, measured on ``device``
    after one warm-up pass (CUDA is synchronised around each repeat).
    """
    device = resolve_device(device)
    xb = x.to(device)
    for m in models:
        m.to(device).eval()
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for m in models:
            m(xb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first pass warms up
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
