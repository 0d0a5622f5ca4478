"""A user's data set named by import path: ``--dataset pkg.module:function``.

The function takes no arguments and returns a dict with the keys of a data set's ``.npz`` file:
``X_train, y_train, X_test, y_test`` (arrays or tensors; inputs ``(N, *input_shape)``, integer
labels ``(N,)``) and optionally ``class_names``. Like a model's import path, the module is imported
only when the caller allows it (see :mod:`ensemble_kd.factories`).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from .datasets import check_labels
from .factories import resolve_function
from .splits import Splits, make_splits

REQUIRED = ("X_train", "y_train", "X_test", "y_test")


def _array(value, key: str, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except Exception:  # a ragged list, an object numpy cannot take
        raise ValueError(f"data set {name!r}: {key} is not an array") from None
    if a.dtype == object:
        raise ValueError(f"data set {name!r}: {key} holds Python objects, not numbers")
    return a


def arrays_to_splits(data: dict, name: str, val_fraction: float, seed: int) -> Splits:
    """Check a data set's arrays (the ``.npz`` keys) and split off validation data.

    Raises:
        ValueError: a missing key or inconsistent arrays, naming the data set.
    """
    if not isinstance(data, dict):
        raise ValueError(f"data set {name!r} returned {type(data).__name__}, expected a dict with "
                         f"keys {', '.join(REQUIRED)} (and optionally class_names)")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"data set {name!r}: missing key(s) {', '.join(missing)} "
                         f"(found: {', '.join(map(str, data)) or 'none'})")
    x = {part: _array(data[f"X_{part}"], f"X_{part}", name) for part in ("train", "test")}
    y = {part: check_labels(_array(data[f"y_{part}"], f"y_{part}", name), f"y_{part}",
                            f"data set {name!r}")
         for part in ("train", "test")}
    for part in ("train", "test"):
        if x[part].size == 0 or y[part].size == 0:
            raise ValueError(f"data set {name!r}: X_{part}/y_{part} is empty")
        if x[part].ndim < 2 or x[part].shape[0] != y[part].shape[0]:
            raise ValueError(f"data set {name!r}: X_{part} has shape {x[part].shape} but y_{part} "
                             f"has {y[part].shape[0]} labels (need (N, ...) inputs and N labels)")
        if not (np.issubdtype(x[part].dtype, np.number) or x[part].dtype == bool):
            raise ValueError(f"data set {name!r}: X_{part} must be numeric, got dtype {x[part].dtype}")
        if not np.all(np.isfinite(x[part])):
            raise ValueError(f"data set {name!r}: X_{part} holds non-finite values (nan or inf)")
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise ValueError(f"data set {name!r}: X_train inputs have shape {x['train'].shape[1:]} but "
                         f"X_test inputs have {x['test'].shape[1:]}")
    n_classes = int(max(y["train"].max(), y["test"].max())) + 1
    if data.get("class_names") is not None:
        names = [str(s) for s in np.asarray(data["class_names"]).reshape(-1)]
        if len(names) < n_classes:
            raise ValueError(f"data set {name!r}: {len(names)} class_names but labels go up to "
                             f"{n_classes - 1}")
    else:
        names = [str(i) for i in range(n_classes)]
    return make_splits(name, x["train"].astype(np.float32), y["train"],
                       x["test"].astype(np.float32), y["test"], names,
                       val_fraction=val_fraction, seed=seed)


def load_dataset_function(
    path: str,
    *,
    allow_imports: Collection[str] = (),
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Splits:
    """The data set returned by the function ``path`` (``pkg.module:function``).

    Args:
        path: the function's import path.
        allow_imports: modules that may be imported (the path's module must be one of them).
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split.

    Raises:
        ImportNotAllowed: the module is not allowed (it is not imported).
        ValueError: the function cannot be found, raises, or returns malformed data (one line
            naming it).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    fn = resolve_function(path, allow_imports, what="data set")
    try:
        data = fn()
    except Exception as e:
        text = str(e).strip()
        raise ValueError(f"data set {path!r} raised {type(e).__name__}: "
                         f"{text.splitlines()[0][:200] if text else ''}") from None
    return arrays_to_splits(data, path, val_fraction, seed)
