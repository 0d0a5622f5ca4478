"""Models named by import path (``pkg.module:function``) or by a hub name, and the consent to import.

A user's model is a function ``function(input_shape, n_classes, **kwargs) -> nn.Module`` named
``pkg.module:function``. The model it returns carries the same JSON ``spec`` as a built-in one
(``{"name": "pkg.module:function", "input_shape", "n_classes", "kwargs"}``), so a saved model is
rebuilt by calling the function again: no pickled code, ever.

Importing a module runs its code. A name found in a file (a checkpoint's spec, a run's
``config.json``) may come from a stranger, so such a module is imported only when the caller allows
it: ``allow_imports`` is a collection of module names, each allowing itself and its submodules
(``--allow-import MODULE`` on the command line). Nothing is allowed by default.

``torchvision/<name>`` and ``timm/<name>`` (a slash, never an import path) build those packages'
models when they are installed (see :mod:`ensemble_kd.hub`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from . import hub
from .models import available_models, build_model, replace_head
from .models import model_from_spec as builtin_from_spec

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# Modules allowed within a ``with allowing_imports(...)`` block, for code that cannot pass them on
# (the specialists package loads its models itself); everything else takes ``allow_imports``.
_SCOPE: ContextVar[frozenset[str]] = ContextVar("ensemble_kd_allow_imports", default=frozenset())


@contextmanager
def allowing_imports(modules: Collection[str]) -> Iterator[None]:
    """Within the block, models loaded without an explicit ``allow_imports`` may import ``modules``."""
    token = _SCOPE.set(frozenset(modules))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def scoped_allowance() -> frozenset[str]:
    """The modules allowed by the innermost :func:`allowing_imports` block (none outside one)."""
    return _SCOPE.get()


class ImportNotAllowed(ValueError):
    """A model or data set names a module that the user has not allowed to be imported."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form ``pkg.module:function``."""
    return isinstance(name, str) and bool(_IMPORT_PATH.match(name))


def module_of(path: str) -> str:
    """The module of an import path: ``"pkg.mod:make"`` -> ``"pkg.mod"``."""
    return path.partition(":")[0]


def is_allowed(module: str, allow_imports: Collection[str]) -> bool:
    """Whether ``module`` is one of ``allow_imports`` or a submodule of one."""
    return any(module == a or module.startswith(a + ".") for a in allow_imports)


def check_allowed(path: str, allow_imports: Collection[str], what: str = "model") -> None:
    """Refuse an import path whose module is not allowed.

    Raises:
        ImportNotAllowed: one line saying what to pass.
    """
    module = module_of(path)
    if not is_allowed(module, allow_imports):
        raise ImportNotAllowed(
            f"{what} {path!r} would import and run module {module!r}, which was not allowed; "
            f"pass --allow-import {module} if you trust it"
        )


def resolve_function(path: str, allow_imports: Collection[str], what: str = "model") -> Callable:
    """Import the function named by ``path`` (after checking consent).

    Raises:
        ImportNotAllowed: the module is not allowed.
        ValueError: malformed path, module not found or failing on import, no such function.
    """
    if not is_import_path(path):
        raise ValueError(f"{what} {path!r} is not an import path of the form pkg.module:function")
    check_allowed(path, allow_imports, what)
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{what} {path!r}: module {e.name!r} not found (is it on PYTHONPATH?)") from None
    except Exception as e:  # the user's module failed while importing
        raise ValueError(f"{what} {path!r}: importing {module_name!r} failed: "
                         f"{type(e).__name__}: {_first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is not a function")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else "")[:200]


def check_output(model: nn.Module, name: str, input_shape: Sequence[int], n_classes: int) -> None:
    """Run ``model`` once on zeros; refuse it unless it maps ``(2, *input_shape)`` to ``(2, n_classes)``.

    Raises:
        ValueError: the forward pass fails or gives another shape, naming ``name``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:
        raise ValueError(f"model {name!r} fails on inputs of shape {tuple(input_shape)}: "
                         f"{type(e).__name__}: {_first_line(e)}") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, n_classes):
        raise ValueError(f"model {name!r} gives outputs of shape {shape} for a batch of 2, "
                         f"expected (2, {n_classes}) logits for {n_classes} classes")


def _call_factory(name: str, fn: Callable, input_shape: tuple[int, ...], n_classes: int,
                  kwargs: dict) -> nn.Module:
    try:
        model = fn(input_shape, n_classes, **kwargs)
    except Exception as e:
        raise ValueError(f"model factory {name!r} raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def build_any(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    *,
    allow_imports: Collection[str] = (),
    **kwargs,
) -> nn.Module:
    """Build a model by any name, with its ``spec``; a user's or hub model is checked by one forward.

    Args:
        name: a built-in name (``"mlp"``), an import path ``pkg.module:function`` or a hub name
            (``torchvision/resnet18``, ``timm/resnet18``).
        input_shape: shape of one input.
        n_classes: number of output logits.
        allow_imports: modules that may be imported (an import path's module must be one of them).
        **kwargs: the builder's options (JSON-able: they are stored in the spec).

    Raises:
        ImportNotAllowed: an import path whose module is not allowed.
        ValueError: unknown name, a factory that fails, returns no ``nn.Module`` or gives outputs
            of the wrong shape (one line naming it).
    """
    if not (is_import_path(name) or hub.is_hub_name(name)):
        if ":" in name and name not in available_models():
            raise ValueError(f"model {name!r} is not an import path of the form pkg.module:function")
        return build_model(name, input_shape, n_classes, **kwargs)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    shape = tuple(int(s) for s in input_shape)
    if hub.is_hub_name(name):
        model = hub.build_hub_model(name, shape, int(n_classes), **kwargs)
    else:
        fn = resolve_function(name, allow_imports)
        model = _call_factory(name, fn, shape, int(n_classes), kwargs)
    check_output(model, name, shape, int(n_classes))
    model.spec = {"name": name, "input_shape": list(shape), "n_classes": int(n_classes),
                  "kwargs": _jsonable(kwargs)}
    return model


def _jsonable(kwargs: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


def model_from_any_spec(spec: dict, allow_imports: Collection[str] = ()) -> nn.Module:
    """Rebuild an (untrained) model from the ``spec`` of a saved model, of any kind of name.

    A hub model is rebuilt without its pretrained ``weights`` file (the saved weights replace them).

    Raises:
        ImportNotAllowed: the spec names a module that is not allowed (it is not imported).
        ValueError: not a model spec, or the model cannot be built.
    """
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not (is_import_path(name) or hub.is_hub_name(name)):
        return builtin_from_spec(spec)
    try:
        shape, n = [int(s) for s in spec["input_shape"]], int(spec["n_classes"])
        kwargs = dict(spec.get("kwargs") or {})
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"not a model spec: {spec!r}") from None
    kwargs.pop("weights", None)
    model = build_any(name, shape, n, allow_imports=allow_imports, **kwargs)
    head_out = spec.get("head_out")  # specialists: a resized head
    if head_out is not None and head_out != n:
        replace_head(model, int(head_out))
    model.spec = dict(spec)
    return model
