"""Model builders by name, and the spec that rebuilds a saved model.

A model is any ``nn.Module`` mapping a batch ``(B, *input_shape)`` to logits ``(B, C)``. Models built
here carry a JSON-able ``spec`` (name + keyword arguments) so a checkpoint can rebuild the
architecture without pickling code. Every builder ends in a final ``nn.Linear`` called ``head``: the
specialists replace it with a smaller one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Register a builder ``fn(input_shape, n_classes, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


class MLP(nn.Module):
    """Fully connected ReLU network: flatten -> [Linear -> ReLU -> Dropout] * L -> head."""

    def __init__(self, in_features: int, n_classes: int, widths: Sequence[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for w in widths:
            layers += [nn.Linear(d, w), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in) -> (B, C)
        return self.head(self.body(x))


class ConvNet(nn.Module):
    """Small convnet: [Conv3x3 -> BN -> ReLU -> MaxPool2] * L -> global average pool -> head."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for ch in channels:
            layers += [
                nn.Conv2d(c, ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c = ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, C)
        return self.head(self.body(x))


class CNN(nn.Module):
    """Image classifier: [Conv3x3 -> MaxPool2 -> BN -> ReLU] * L -> pooled grid -> dense -> head.

    Unlike :class:`ConvNet` (global average pooling straight into the head) it keeps a small spatial
    grid of features (up to ``grid`` x ``grid``, adaptive average pooling, so any input of at least
    a few pixels works) and classifies it with a hidden dense layer. Pooling before batch norm and
    ReLU computes them on a quarter of the pixels (max pooling commutes with ReLU): same accuracy,
    cheaper on a CPU.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int],
        hidden: int,
        grid: int,
        dropout: float,
    ):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [
                nn.Conv2d(c, ch, 3, padding=1, bias=False),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
            ]
            c, h, w = ch, -(-h // 2), -(-w // 2)
        gh, gw = min(grid, h), min(grid, w)  # never upsample: tiny inputs keep their own grid
        layers += [nn.AdaptiveAvgPool2d((gh, gw)), nn.Flatten()]
        d = c * gh * gw
        if hidden > 0:
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, C)
        return self.head(self.body(x))


@register("mlp")
def mlp(
    input_shape: Sequence[int],
    n_classes: int,
    widths: Sequence[int] = (256, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """MLP on flattened inputs. ``widths``: hidden layer sizes; ``dropout``: after each hidden layer."""
    if any(int(w) < 1 for w in widths):
        raise ValueError(f"mlp widths must be positive integers, got {list(widths)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    return MLP(math.prod(input_shape), n_classes, [int(w) for w in widths], float(dropout))


@register("convnet")
def convnet(
    input_shape: Sequence[int],
    n_classes: int,
    channels: Sequence[int] = (32, 64),
    dropout: float = 0.0,
) -> nn.Module:
    """Small convnet for image inputs (C, H, W)."""
    if len(input_shape) != 3:
        raise ValueError(
            f"convnet needs image inputs (channels, height, width), got input shape {tuple(input_shape)}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    return ConvNet(int(input_shape[0]), n_classes, [int(c) for c in channels], float(dropout))


@register("cnn")
def cnn(
    input_shape: Sequence[int],
    n_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    grid: int = 7,
    dropout: float = 0.0,
) -> nn.Module:
    """Image classifier for (C, H, W) inputs, the default teacher for images (see :class:`CNN`).

    ``channels``: output channels of each conv stage (each halves the image); ``hidden``: width of
    the dense layer (0: none); ``grid``: the largest side of the pooled feature grid; ``dropout``:
    before the head. With the defaults on (1, 28, 28): 421,738 parameters for 10 classes.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"cnn needs image inputs (channels, height, width), got input shape {tuple(input_shape)}"
        )
    if not channels or any(int(c) < 1 for c in channels):
        raise ValueError(f"cnn channels must be one or more positive integers, got {list(channels)}")
    if int(hidden) < 0:
        raise ValueError(f"hidden must be >= 0, got {hidden}")
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    return CNN(input_shape, n_classes, [int(c) for c in channels], int(hidden), int(grid),
               float(dropout))


def build_model(name: str, input_shape: Sequence[int], n_classes: int, **kwargs) -> nn.Module:
    """Build a registered model and attach its ``spec`` (for rebuilding from a checkpoint).

    Args:
        name: a registered builder (``"mlp"``, ``"convnet"``, ``"cnn"``).
        input_shape: shape of one input, e.g. (1, 28, 28) or (32,).
        n_classes: number of output logits.
        **kwargs: builder options (``widths``/``channels``, ``dropout``).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    try:
        model = _REGISTRY[name](tuple(input_shape), int(n_classes), **kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for model {name!r}: {e}") from None
    model.spec = {
        "name": name,
        "input_shape": [int(s) for s in input_shape],
        "n_classes": int(n_classes),
        "kwargs": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in kwargs.items()},
    }
    return model


def model_from_spec(spec: dict) -> nn.Module:
    """Rebuild an (untrained) model from the ``spec`` stored by :func:`build_model`."""
    try:
        name, shape, n = spec["name"], spec["input_shape"], spec["n_classes"]
        kwargs = dict(spec.get("kwargs", {}))
    except (KeyError, TypeError):
        raise ValueError(f"not a model spec: {spec!r}") from None
    model = build_model(name, shape, n, **kwargs)
    head_out = spec.get("head_out")  # specialists: a resized head
    if head_out is not None and head_out != n:
        replace_head(model, int(head_out))
        model.spec = dict(spec)
    return model


def replace_head(model: nn.Module, n_out: int) -> nn.Linear:
    """Give ``model`` a new final layer with ``n_out`` outputs; returns the new layer."""
    old = getattr(model, "head", None)
    if not isinstance(old, nn.Linear):
        raise ValueError("the model has no final nn.Linear called 'head' to replace")
    new = nn.Linear(old.in_features, n_out).to(old.weight.device, old.weight.dtype)
    model.head = new
    if hasattr(model, "spec"):
        model.spec = {**model.spec, "head_out": int(n_out)}
    return new


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
