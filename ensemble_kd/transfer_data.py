"""An external transfer set (``--transfer-data PATH``): data the student learns on from the teachers.

Hinton et al. (2015, section 3) and Ba & Caruana (2014) point out that the transfer set need not be
the labelled training data: unlabelled inputs carry the teachers' knowledge through their soft
targets. Two forms are read:

* an ``.npz`` with ``X`` (N, *input_shape) numeric inputs and optionally ``y`` (N,) integer labels
  in the training data's classes, read without unpickling anything;
* an image folder: either class folders named like the training classes (``PATH/<class>/*.png``,
  labelled) or images directly in ``PATH`` (unlabelled). Each image is converted to the training
  inputs' channels (gray or RGB) and resized (bilinear) to their height and width.

The set replaces the training split as what the student is distilled on; the hard-label baseline
still trains on the labelled training split (see :mod:`ensemble_kd.cli.steps`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .image_folder import decode, list_split, list_unlabelled
from .splits import Splits
from .transfer import TransferSet


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(f"{path}: cannot read as an .npz archive without pickle") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single .npy array, not an .npz archive with X (and y)")
    with npz:
        if not any(name.endswith(".npy") for name in npz.zip.namelist()):
            raise ValueError(f"{path}: not an .npz archive (a zip without .npy arrays)")
        if "X" not in npz.files:
            found = ", ".join(npz.files[:6]) + (", ..." if len(npz.files) > 6 else "")
            raise ValueError(f"{path}: missing key X (found: {found}); a transfer set .npz holds "
                             "X and optionally y")
        try:
            x = npz["X"]
            y = npz["y"] if "y" in npz.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            raise ValueError(f"{path}: an array cannot be read without pickle (object array, "
                             "or truncated or damaged)") from None
    return x, y


def _check_npz(path: Path, x: np.ndarray, y: np.ndarray | None, splits: Splits):
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or x.ndim < 2 or not len(x):
        raise ValueError(f"{path}: X must be a non-empty numeric (N, ...) array, got "
                         f"{x.dtype} {x.shape}")
    if tuple(x.shape[1:]) != tuple(splits.input_shape):
        raise ValueError(f"{path}: X inputs have shape {tuple(x.shape[1:])} but the training "
                         f"inputs have {tuple(splits.input_shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: X holds non-finite values (nan or inf)")
    if y is None:
        return torch.as_tensor(x, dtype=torch.float32), None
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{path}: y has shape {y.shape} but X has {len(x)} rows")
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    if not integral:
        raise ValueError(f"{path}: y must hold integer labels, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= splits.n_classes):
        raise ValueError(f"{path}: y holds labels in [{int(y.min())}, {int(y.max())}] but there "
                         f"are {splits.n_classes} classes")
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y.astype(np.int64))


def _read_folder(path: Path, splits: Splits):
    shape = tuple(splits.input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"{path}: an image folder transfer set needs image training data "
                         f"(1 or 3 channels), but the inputs have shape {shape}")
    labelled = any(p.is_dir() for p in path.iterdir() if not p.name.startswith("."))
    images = list_split(path, splits.class_names)[0] if labelled else list_unlabelled(path)
    x = decode(images, shape[0], (shape[1], shape[2]), resize=True)
    y = None if images.labels is None else torch.as_tensor(images.labels, dtype=torch.int64)
    return x, y


def load_transfer_data(path: str | Path, splits: Splits, *, labelled: bool = True) -> TransferSet:
    """Read the external transfer set at ``path`` (an ``.npz`` or an image folder) for ``splits``.

    Args:
        path: the file or folder.
        splits: the training data: the inputs must fit its input shape, labels its classes.
        labelled: False drops any labels (soft targets only).

    Returns:
        A :class:`TransferSet` whose ``indices`` count the external examples (0..N-1): they are
        not rows of ``splits.x_train``.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: a malformed file, or inputs or labels that do not fit the data (one line
            naming the file or folder).
    """
    path = Path(path)
    if path.is_dir():
        x, y = _read_folder(path, splits)
    elif path.is_file():
        x, y = _check_npz(path, *_read_npz(path), splits)
    else:
        raise FileNotFoundError(f"{path}: no such file or folder (--transfer-data)")
    return TransferSet(x=x, y=y if labelled else None, indices=torch.arange(len(x)))
