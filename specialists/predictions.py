"""Saved predictions: probabilities and labels in a plain ``.npz``, re-analysed later without pickle."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from ensemble_kd.io import FormatError, atomic_path

from .checks import check_class_names, check_labels, check_probs

__all__ = ["load_predictions", "save_predictions"]


def save_predictions(path: str | os.PathLike, probs: Any, labels: Any,
                     class_names: list[str] | None = None) -> None:
    """Save predicted probabilities and true labels to an ``.npz``, atomically.

    Args:
        path: destination file (conventionally ``*.npz``; the name is kept as given).
        probs: (N, C) predicted probabilities (rows sum to 1).
        labels: (N,) true class indices.
        class_names: optional C names, stored as a fixed-width unicode array so
            that loading needs no pickle.
    """
    probs = check_probs(probs)
    n, c = probs.shape
    labels = check_labels(labels, "labels", c)
    if labels.shape[0] != n:
        raise ValueError(f"probs has {n} rows but labels has {labels.shape[0]} entries")
    arrays = {"probs": probs.astype(np.float32), "labels": labels}
    if class_names is not None:
        arrays["class_names"] = np.array(check_class_names(class_names, c), dtype=np.str_)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        np.savez_compressed(f, **arrays)


def load_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Load predictions written by :func:`save_predictions` (or any ``.npz`` with the same keys).

    Returns:
        ``(probs, labels, class_names)``: (N, C) float, (N,) int64, and the C
        names or None when the file has none.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not an ``.npz``, a key is missing, or the arrays are inconsistent.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise FormatError(f"{path}: expected an .npz archive, found a single .npy array")
        with z:
            missing = [k for k in ("probs", "labels") if k not in z.files]
            if missing:
                raise FormatError(f"{path}: missing array(s) {missing}; found {z.files}")
            probs = z["probs"]
            labels = z["labels"]
            names = z["class_names"].tolist() if "class_names" in z.files else None
    except FormatError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise FormatError(f"{path}: not a readable predictions .npz ({e})") from None
    try:
        probs = check_probs(probs)
        labels = check_labels(labels, "labels", probs.shape[1])
        if labels.shape[0] != probs.shape[0]:
            raise ValueError(f"probs has {probs.shape[0]} rows but labels has {labels.shape[0]}")
        if names is not None:
            names = check_class_names(names, probs.shape[1])
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    return probs, labels, names
