"""The data sets read from files or libraries: scikit-learn's digits, Fashion-MNIST, a user's .npz.

Each loader returns :class:`~ensemble_kd.splits.Splits` with a seeded stratified validation split;
:func:`ensemble_kd.data.load_dataset` dispatches on the name. None of these files carries a format
version of ours: IDX and ``.npz`` are other people's formats, checked field by field on reading
(IDX magic number and sizes; ``.npz`` keys, shapes and dtypes, never unpickled).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .idx import read_idx
from .splits import Splits, make_splits, stratified_split

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def load_digits(val_fraction: float, seed: int) -> Splits:
    """scikit-learn's embedded 8x8 digits: inputs (N, 1, 8, 8) in [0, 1], fixed 25% test split.

    Args:
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    # The test split uses a fixed seed so that every run, whatever its `seed`,
    # is scored on the same 25% of the images.
    train_idx, test_idx = stratified_split(y, 0.25, seed=0)
    return make_splits(
        "digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx],
        [str(i) for i in range(10)], val_fraction=val_fraction, seed=seed,
    )  # fmt: skip


def load_fashion_mnist(data_dir: str | Path | None, val_fraction: float, seed: int) -> Splits:
    """Fashion-MNIST from its IDX files (gzipped or raw): inputs (N, 1, 28, 28) in [0, 1].

    Args:
        data_dir: the folder holding the four files; default :data:`FASHION_MNIST_DIR`.
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split.

    Raises:
        FileNotFoundError: files missing (the message says how to get them).
        ValueError: a malformed file (the message names it).
    """
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    found, missing = {}, []
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{stem}.gz")
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing from {folder}: {', '.join(missing)} "
            "(the uncompressed names without .gz are accepted too). Debian's "
            "dataset-fashion-mnist package provides them (apt-get install "
            "dataset-fashion-mnist), or pass --data-dir with the folder that holds them."
        )
    arrays = {key: read_idx(p) for key, p in found.items()}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{folder}: {part} images have shape {x.shape} and labels {y.shape}; "
                "expected (N, H, W) images and N labels"
            )
        if y.size and int(y.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{found[f'y_{part}']}: label {int(y.max())} is not in 0..9")

    def images(a: np.ndarray) -> torch.Tensor:
        # uint8 -> float32 in [0, 1] in one vectorised pass; (N, H, W) -> (N, 1, H, W)
        return torch.from_numpy(a).unsqueeze(1).float().div_(255.0)

    return make_splits(
        "fashion-mnist",
        images(arrays["x_train"]), arrays["y_train"].astype(np.int64),
        images(arrays["x_test"]), arrays["y_test"].astype(np.int64),
        FASHION_MNIST_CLASSES, val_fraction=val_fraction, seed=seed,
    )  # fmt: skip


def check_labels(y: np.ndarray, key: str, where: str) -> np.ndarray:
    """Labels ``y`` as int64 after checking them: 1-D, integer-valued, not negative.

    Args:
        y: the array read.
        key: its name (``y_train``...), for the message.
        where: what holds it, for the message (a file's path, ``data set 'name'``).
    """
    if y.ndim != 1:
        raise ValueError(f"{where}: {key} must be 1-D, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError(f"{where}: {key} holds non-integer labels")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: {key} must hold integer labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{where}: {key} holds negative label {int(y.min())}")
    return y.astype(np.int64)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the arrays of a data set's ``.npz`` archive without unpickling anything.

    Returns:
        The four required arrays, and ``class_names`` when present.

    Raises:
        ValueError: not an ``.npz`` archive, a required key missing, or an array that needs pickle.
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except zipfile.BadZipFile:
        raise ValueError(
            f"{path}: cannot read as an .npz archive without pickle: a truncated or damaged zip"
        ) from None
    except (ValueError, OSError, EOFError):
        # numpy takes any file that is neither .npy nor zip for a pickle, and its message advises
        # loading it unsafely: say what is wrong in our words instead
        raise ValueError(
            f"{path}: cannot read as an .npz archive without pickle: not a zip of .npy arrays"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single .npy array, not an .npz archive")
    with npz:
        required = ("X_train", "y_train", "X_test", "y_test")
        missing = [k for k in required if k not in npz.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {', '.join(missing)} "
                f"(found: {', '.join(npz.files) or 'none'})"
            )
        arrays = {}
        for key in (*required, "class_names"):
            if key not in npz.files:
                continue
            try:
                arrays[key] = npz[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                reason = (
                    "holds Python objects (an object array), which ensemble-kd never unpickles"
                    if "object" in str(e).lower() or "pickle" in str(e).lower()
                    else "is truncated or damaged"
                )
                raise ValueError(f"{path}: array {key} cannot be read without pickle: {reason}") from None
        return arrays


def load_npz(path: str | Path | None, val_fraction: float, seed: int) -> Splits:
    """A user's ``.npz`` file with ``X_train, y_train, X_test, y_test`` and optional ``class_names``.

    The arrays are read without unpickling anything. ``X_*`` are ``(N, *input_shape)`` numeric
    inputs (converted to float32), ``y_*`` are ``(N,)`` integer labels (integral floats are
    accepted); without ``class_names`` the classes are named ``"0"``, ``"1"``, ...

    Args:
        path: the file.
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ``.npz`` archive, a missing key, or inconsistent arrays (the message
            names the file).
    """
    if path is None:
        raise ValueError(
            "the npz data set needs path= (a .npz file with X_train, y_train, "
            "X_test, y_test and optionally class_names)"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = read_npz(path)

    y_train = check_labels(data["y_train"], "y_train", str(path))
    y_test = check_labels(data["y_test"], "y_test", str(path))
    for part, y in (("train", y_train), ("test", y_test)):
        x = data[f"X_{part}"]
        if x.size == 0 or y.size == 0:
            raise ValueError(f"{path}: X_{part}/y_{part} is empty")
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{path}: X_{part} has shape {x.shape} but y_{part} has "
                f"{y.shape[0]} labels (need (N, ...) inputs and N labels)"
            )
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{path}: X_{part} must be numeric, got dtype {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{path}: X_{part} holds non-finite values (nan or inf)")
    if data["X_train"].shape[1:] != data["X_test"].shape[1:]:
        raise ValueError(
            f"{path}: X_train inputs have shape {data['X_train'].shape[1:]} "
            f"but X_test inputs have {data['X_test'].shape[1:]}"
        )
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    if "class_names" in data:
        names = [str(s) for s in np.asarray(data["class_names"]).reshape(-1)]
        if len(names) < n_classes:
            raise ValueError(
                f"{path}: {len(names)} class_names but labels go up to {n_classes - 1}"
            )
    else:
        names = [str(i) for i in range(n_classes)]
    return make_splits(
        "npz", data["X_train"].astype(np.float32), y_train,
        data["X_test"].astype(np.float32), y_test, names,
        val_fraction=val_fraction, seed=seed,
    )  # fmt: skip
