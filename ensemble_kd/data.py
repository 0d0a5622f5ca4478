"""Data sets held in memory as tensors: load one by name.

Every loader returns a :class:`Splits`: train / validation / test tensors plus the class names,
with a seeded stratified validation split. Four sources (see :func:`load_dataset`):
scikit-learn's embedded 8x8 digits, Fashion-MNIST read from its original IDX files, synthetic data
with planted groups of confusable classes (so tests know the right clusters), and a user's own
``.npz`` file or image folder.

The pieces live in modules of one job each, and everything is importable from here as before:

* :mod:`ensemble_kd.splits`: :class:`Splits`, :func:`stratified_split`, :func:`make_splits`;
* :mod:`ensemble_kd.datasets`: the digits, Fashion-MNIST and ``.npz`` loaders;
* :mod:`ensemble_kd.synthetic`: :func:`make_synthetic` and its defaults;
* :mod:`ensemble_kd.idx`: IDX files (:func:`read_idx`, :func:`write_idx`);
* :mod:`ensemble_kd.transfer`: :class:`TransferSet`, :func:`make_transfer_set`.
"""

from __future__ import annotations

from pathlib import Path

from .datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    load_digits,
    load_fashion_mnist,
    load_npz,
)
from .idx import read_idx, write_idx
from .image_folder import load_image_folder
from .splits import Splits, make_splits, stratified_split
from .synthetic import SYNTHETIC_DEFAULTS, load_synthetic, make_synthetic
from .transfer import TransferSet, make_transfer_set

__all__ = [
    "DATASET_NAMES", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "FASHION_MNIST_FILES",
    "SYNTHETIC_DEFAULTS", "Splits", "TransferSet", "load_dataset", "make_splits",
    "make_synthetic", "make_transfer_set", "read_idx", "stratified_split", "write_idx",
]  # fmt: skip

DATASET_NAMES = ("digits", "fashion-mnist", "synthetic", "npz", "folder")


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    path: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options,
) -> Splits:
    """Load a named data set into memory with a seeded stratified validation split.

    Args:
        name: ``"digits"`` (scikit-learn's embedded 8x8 digits, inputs (N, 1, 8, 8) in
            [0, 1], fixed 25% test split), ``"fashion-mnist"`` (IDX files, inputs
            (N, 1, 28, 28) in [0, 1]), ``"synthetic"`` (inputs (N, dim), planted
            ``groups``; ``options`` as in :func:`make_synthetic`), ``"npz"``
            (a user's file at ``path``) or ``"folder"`` (an image folder at ``path``, see
            :mod:`ensemble_kd.image_folder`; option ``image_size``).
        data_dir: folder of the Fashion-MNIST IDX files; default
            ``/usr/share/datasets/fashion-mnist``. Ignored by other data sets.
        path: the ``.npz`` file for ``"npz"``, the folder for ``"folder"``. Ignored by others.
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split; the same seed gives the same split.
        **options: synthetic-data options, or ``image_size`` for ``"folder"``; others take none.

    Raises:
        ValueError: unknown name or option, bad ``val_fraction``, malformed file.
        FileNotFoundError: data files not found (the message says how to get them).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if name == "synthetic":
        return load_synthetic(options, val_fraction, seed)
    if name == "folder" and set(options) <= {"image_size"}:
        return load_image_folder(path, val_fraction, seed, **options)
    if options:
        raise ValueError(f"data set {name!r} takes no options, got: {', '.join(sorted(options))}")
    if name == "digits":
        return load_digits(val_fraction, seed)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, val_fraction, seed)
    return load_npz(path, val_fraction, seed)
