"""torchvision and timm models by name (``torchvision/resnet18``, ``timm/resnet18``), when installed.

Both packages are optional extras, imported only when such a name is used. A model is built without
pretrained weights (nothing is ever downloaded), for the data's class count and input channels:
timm takes the channels itself (``in_chans``); for torchvision the first ``nn.Conv2d`` is replaced by
one with the data's channels. ``weights=FILE`` loads pretrained weights from a local state dict
(read safely, weights only); tensors whose shape differs from the adapted model's (the first
convolution for other channels, the classifier for another class count) are left at their
initial values.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .io import load_tensors

HUBS = ("torchvision", "timm")


def is_hub_name(name: str) -> bool:
    """Whether ``name`` is ``torchvision/<model>`` or ``timm/<model>``."""
    if not isinstance(name, str) or name.count("/") != 1:
        return False
    hub_name, model = name.split("/")
    return hub_name in HUBS and bool(model)


def _import(hub_name: str):
    try:
        return importlib.import_module(hub_name)
    except ImportError:
        raise ValueError(f"model names starting with {hub_name}/ need the {hub_name} package, which "
                         f"is not installed (pip install {hub_name})") from None


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    """(parent module, attribute name, layer) of the first ``nn.Conv2d`` in ``model``."""
    for full, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = full.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    return None


def adapt_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first ``nn.Conv2d`` of ``model`` by one taking ``in_channels`` channels."""
    found = _first_conv(model)
    if found is None or found[2].in_channels == in_channels:
        return
    parent, attr, old = found
    setattr(parent, attr, nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
        dilation=old.dilation, groups=1, bias=old.bias is not None, padding_mode=old.padding_mode,
    ))


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load the tensors of a local state dict that fit ``model`` (same name and shape)."""
    state = load_tensors(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not fitting:
        raise ValueError(f"{path}: no tensor in it fits the model (names or shapes differ)")
    model.load_state_dict(fitting, strict=False)


def build_hub_model(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``torchvision/<model>`` or ``timm/<model>`` for images ``(C, H, W)`` and ``n_classes``.

    Args:
        name: the hub and the model's name in it.
        input_shape: ``(channels, height, width)``.
        n_classes: number of output logits.
        weights: a local file of pretrained weights (a state dict), or None.
        **kwargs: passed on to ``torchvision.models.get_model`` or ``timm.create_model``.

    Raises:
        ValueError: the package is missing, the model is unknown or fails to build, or the inputs
            are not images.
    """
    hub_name, arch = name.split("/")
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs (channels, height, width), "
                         f"got input shape {tuple(input_shape)}")
    package = _import(hub_name)
    try:
        if hub_name == "timm":
            model = package.create_model(arch, pretrained=False, num_classes=n_classes,
                                         in_chans=int(input_shape[0]), **kwargs)
        else:
            model = package.models.get_model(arch, weights=None, num_classes=n_classes, **kwargs)
            adapt_channels(model, int(input_shape[0]))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"model {name!r} cannot be built: {type(e).__name__}: {msg}") from None
    if weights is not None:
        load_pretrained(model, weights)
    return model
