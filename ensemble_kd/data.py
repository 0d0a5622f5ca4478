"""Data sets held in memory as tensors, seeded splits, IDX files and transfer sets.

Every loader returns a :class:`Splits`: train / validation / test tensors plus the
class names. Data of MNIST size fits in memory many times over, and batches are
sliced from a permutation by the training loop, so nothing here is a
``Dataset``/``DataLoader``.

Three sources are built in (see :func:`load_dataset`): scikit-learn's embedded
8x8 digits, Fashion-MNIST read from its original IDX files, and synthetic data
with planted groups of confusable classes (so tests know the right clusters).
A user's own data comes in as an ``.npz`` file.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ensemble_kd.idx import read_idx, write_idx  # noqa: F401  (re-exported)

DATASET_NAMES = ("digits", "fashion-mnist", "synthetic", "npz")

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

# Defaults of the synthetic data set. Tuned (see tests/test_data.py) so that a
# small MLP reaches roughly 80-85% test accuracy with over 95% of its errors
# inside a planted group: in 32 dimensions group centres sit ~8 noise s.d.
# apart (sqrt(2 * 32) * separation), classes in a group ~3.6 s.d. apart.
SYNTHETIC_DEFAULTS = {
    "n_classes": 30,
    "n_groups": 6,
    "dim": 32,
    "separation": 1.0,  # s.d. of group centres around the origin, per coordinate
    "spread": 0.45,  # s.d. of class means around their group centre, per coordinate
    "n_train": 6000,
    "n_test": 3000,
    "synthetic_seed": 0,  # fixes the data itself; `seed` only moves the validation split
}


@dataclass(eq=False)  # eq on tensors is ambiguous; compare fingerprints instead
class Splits:
    """A data set held in memory as tensors, with a fixed seeded validation split.

    Attributes:
        name: data set name, e.g. ``"digits"``.
        x_train: ``(N, *input_shape)`` float32 inputs.
        y_train: ``(N,)`` int64 labels in ``[0, n_classes)``.
        x_val, y_val: the validation split, same layout (carved from the training data).
        x_test, y_test: the test split, same layout.
        class_names: one name per class; its length defines ``n_classes``.
        groups: the planted partition of classes into confusable groups (sorted
            lists), known only for synthetic data.
    """

    name: str
    x_train: torch.Tensor  # (N, *input_shape)
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor  # (N_val, *input_shape)
    y_val: torch.Tensor  # (N_val,)
    x_test: torch.Tensor  # (N_test, *input_shape)
    y_test: torch.Tensor  # (N_test,)
    class_names: list[str]
    groups: list[list[int]] | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        shape = tuple(self.x_train.shape[1:])
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{part} has {x.shape[0]} rows but y_{part} has shape {tuple(y.shape)}"
                )
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"x_{part} has input shape {tuple(x.shape[1:])}, x_train has {shape}"
                )
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError(f"x_{part} holds non-finite values (nan or inf)")
            if y.is_floating_point() or y.is_complex():
                raise ValueError(f"y_{part} must hold integer labels, got {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(
                    f"y_{part} holds labels in [{int(y.min())}, {int(y.max())}] but there are "
                    f"only {len(self.class_names)} class names"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the name, every array (dtype, shape, bytes), class names, groups.

        Identifies the exact data a cached result was computed on. Computed once
        and cached: tensors are treated as immutable once wrapped in ``Splits``.
        Hashing the raw buffers takes well under a second for 60k x 784 float32.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"name={self.name}\n".encode())
            for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
                arr = np.ascontiguousarray(getattr(self, key).detach().cpu().numpy())
                h.update(f"{key}:{arr.dtype.str}:{arr.shape}\n".encode())
                h.update(memoryview(arr).cast("B"))
            h.update(f"classes={self.class_names!r}\ngroups={self.groups!r}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> str:
        """One line: name, split sizes, number of classes, input shape."""
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} val / "
            f"{len(self.y_test)} test, {self.n_classes} classes, input shape {self.input_shape}"
        )


@dataclass(eq=False)
class TransferSet:
    """The examples a student is distilled on (Hinton et al. 2015, section 3).

    Attributes:
        x: ``(N, *input_shape)`` inputs.
        y: ``(N,)`` int64 labels, or ``None`` when the transfer set is unlabelled.
        indices: ``(N,)`` int64 positions in ``splits.x_train`` the examples came from
            (ascending), so cached teacher outputs can be looked up.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])


# ---------------------------------------------------------------------------
# Splitting


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` across classes in proportion to ``counts`` (largest remainder)."""
    quota = counts * (total / max(int(counts.sum()), 1))
    alloc = np.floor(quota).astype(np.int64)
    short = total - int(alloc.sum())
    if short > 0:
        # Stable sort: ties go to the lower class index, so the result is deterministic.
        order = np.argsort(-(quota - alloc), kind="stable")
        alloc[order[:short]] += 1
    return alloc


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of example indices into (kept, held out).

    Each class gives ``fraction`` of its examples (largest-remainder rounding, so
    the held-out total is ``round(fraction * N)``); a class never gives away its
    last example. Where that leaves nothing held out (every class a singleton),
    the held-out examples are drawn without stratification.

    Args:
        y: ``(N,)`` integer labels.
        fraction: share held out, in (0, 1).
        seed: the same seed gives the same split.

    Returns:
        ``(kept, held_out)``: ascending int64 index arrays that partition ``range(N)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n = len(y)
    if n < 2:
        raise ValueError(f"cannot split {n} example(s): need at least 2")
    total = min(max(1, round(fraction * n)), n - 1)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    alloc = np.minimum(_allocate(counts, total), counts - 1)
    held = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        held.append(rng.permutation(members)[: alloc[c]])
    held_out = np.concatenate(held) if held else np.empty(0, np.int64)
    if held_out.size == 0:
        held_out = rng.permutation(n)[:total]
    mask = np.zeros(n, dtype=bool)
    mask[held_out] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _make_splits(
    name: str,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray,
    x_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray,
    class_names: list[str],
    *,
    val_fraction: float,
    seed: int,
    groups: list[list[int]] | None = None,
) -> Splits:
    """Carve the seeded validation split out of the training data and wrap as tensors."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_idx, val_idx = stratified_split(np.asarray(y_train), val_fraction, seed)
    xt = torch.as_tensor(x_train, dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.int64)
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return Splits(
        name=name,
        x_train=xt[tr],
        y_train=yt[tr],
        x_val=xt[va],
        y_val=yt[va],
        x_test=torch.as_tensor(x_test, dtype=torch.float32),
        y_test=torch.as_tensor(np.asarray(y_test), dtype=torch.int64),
        class_names=list(class_names),
        groups=groups,
    )


# ---------------------------------------------------------------------------
# IDX files


# ---------------------------------------------------------------------------
# Loaders


def _load_digits(val_fraction: float, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    # The test split uses a fixed seed so that every run, whatever its `seed`,
    # is scored on the same 25% of the images.
    train_idx, test_idx = stratified_split(y, 0.25, seed=0)
    return _make_splits(
        "digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx],
        [str(i) for i in range(10)], val_fraction=val_fraction, seed=seed,
    )  # fmt: skip


def _load_fashion_mnist(data_dir: str | Path | None, val_fraction: float, seed: int) -> Splits:
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

    return _make_splits(
        "fashion-mnist",
        images(arrays["x_train"]), arrays["y_train"].astype(np.int64),
        images(arrays["x_test"]), arrays["y_test"].astype(np.int64),
        FASHION_MNIST_CLASSES, val_fraction=val_fraction, seed=seed,
    )  # fmt: skip


def make_synthetic(
    *,
    n_classes: int = 30,
    n_groups: int = 6,
    dim: int = 32,
    separation: float = 1.0,
    spread: float = 0.45,
    n_train: int = 6000,
    n_test: int = 3000,
    synthetic_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Gaussian classes whose means cluster into planted groups of confusable classes.

    Group centres ~ N(0, separation^2 I); each class mean ~ N(its centre,
    spread^2 I); each example ~ N(its class mean, I). Classes are assigned to
    groups by a seeded permutation (split as evenly as possible), so a
    clustering method cannot succeed by reading the class order. Labels are
    balanced and shuffled.

    Returns:
        ``(x_train (n_train, dim) float32, y_train (n_train,) int64, x_test, y_test, groups)``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if not 1 <= n_groups <= n_classes:
        raise ValueError(f"n_groups must be in [1, n_classes={n_classes}], got {n_groups}")
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    if not separation > 0 or not spread >= 0:
        raise ValueError(f"need separation > 0 and spread >= 0, got {separation}, {spread}")
    if n_train < n_classes or n_test < 1:
        raise ValueError(
            f"need n_train >= n_classes ({n_classes}) and n_test >= 1, got {n_train}, {n_test}"
        )
    rng = np.random.default_rng(synthetic_seed)
    groups = sorted(
        sorted(int(c) for c in g) for g in np.array_split(rng.permutation(n_classes), n_groups)
    )
    group_of = np.empty(n_classes, dtype=np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    centres = rng.normal(0.0, separation, size=(n_groups, dim))  # (G, D)
    means = centres[group_of] + rng.normal(0.0, spread, size=(n_classes, dim))  # (C, D)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)  # balanced
        x = means[y] + rng.normal(size=(n, dim))  # (n, D)
        return x.astype(np.float32), y

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return x_train, y_train, x_test, y_test, groups


def _load_synthetic(options: dict, val_fraction: float, seed: int) -> Splits:
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown option(s) for synthetic data: {', '.join(unknown)}; "
            f"valid: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    opts = {**SYNTHETIC_DEFAULTS, **options}
    x_train, y_train, x_test, y_test, groups = make_synthetic(**opts)
    names = [f"c{i:02d}" for i in range(opts["n_classes"])]
    return _make_splits(
        "synthetic", x_train, y_train, x_test, y_test, names,
        val_fraction=val_fraction, seed=seed, groups=groups,
    )  # fmt: skip


def _npz_labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(f"{path}: {key} must be 1-D, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError(f"{path}: {key} holds non-integer labels")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: {key} must hold integer labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{path}: {key} holds negative label {int(y.min())}")
    return y.astype(np.int64)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the arrays of an .npz archive without unpickling anything."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read as an .npz archive without pickle ({e})") from None
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
        try:
            return {k: npz[k] for k in (*required, "class_names") if k in npz.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            # e.g. an object array, which cannot be loaded without pickle
            raise ValueError(f"{path}: an array cannot be read without pickle ({e})") from None


def _load_npz(path: str | Path | None, val_fraction: float, seed: int) -> Splits:
    if path is None:
        raise ValueError(
            "the npz data set needs path= (a .npz file with X_train, y_train, "
            "X_test, y_test and optionally class_names)"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = _read_npz(path)

    y_train = _npz_labels(data["y_train"], "y_train", path)
    y_test = _npz_labels(data["y_test"], "y_test", path)
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
    return _make_splits(
        "npz", data["X_train"].astype(np.float32), y_train,
        data["X_test"].astype(np.float32), y_test, names,
        val_fraction=val_fraction, seed=seed,
    )  # fmt: skip


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
            ``groups``; ``options`` as in :func:`make_synthetic`) or ``"npz"``
            (a user's file at ``path``).
        data_dir: folder of the Fashion-MNIST IDX files; default
            ``/usr/share/datasets/fashion-mnist``. Ignored by other data sets.
        path: the ``.npz`` file for ``"npz"``. Ignored by other data sets.
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split; the same seed gives the same split.
        **options: synthetic-data options; other data sets take none.

    Raises:
        ValueError: unknown name or option, bad ``val_fraction``, malformed file.
        FileNotFoundError: data files not found (the message says how to get them).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if name == "synthetic":
        return _load_synthetic(options, val_fraction, seed)
    if options:
        raise ValueError(f"data set {name!r} takes no options, got: {', '.join(sorted(options))}")
    if name == "digits":
        return _load_digits(val_fraction, seed)
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_dir, val_fraction, seed)
    return _load_npz(path, val_fraction, seed)


# ---------------------------------------------------------------------------
# Transfer sets


def make_transfer_set(
    splits: Splits,
    *,
    fraction: float = 1.0,
    omit_classes: Iterable[int] = (),
    labelled: bool = True,
    seed: int = 0,
) -> TransferSet:
    """Choose the training examples a student is distilled on.

    The paper's experiments: all training data; a small stratified fraction of
    it (3% generalises almost as well with soft targets); or everything except
    some classes (an omitted class can still be taught by the soft targets).

    Args:
        splits: the data; examples come from ``splits.x_train``.
        fraction: share of the (kept) training data, in (0, 1]. Stratified and
            seeded; every kept class keeps at least one example, so for tiny
            fractions the set can exceed ``fraction`` by up to one per class.
        omit_classes: class indices whose examples are left out.
        labelled: when False, ``y`` is None (distil from teacher outputs alone).
        seed: the same seed gives the same subset.

    Returns:
        A :class:`TransferSet` with ascending ``indices`` into the training data.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    omit = sorted({int(c) for c in omit_classes})
    bad = [c for c in omit if not 0 <= c < splits.n_classes]
    if bad:
        raise ValueError(
            f"omit_classes contains class {bad[0]} but there are only {splits.n_classes} classes"
        )
    if len(omit) == splits.n_classes:
        raise ValueError("omit_classes omits every class: nothing left to transfer on")
    y = splits.y_train.numpy()
    keep = np.flatnonzero(~np.isin(y, omit))
    if fraction < 1.0 and keep.size:
        rng = np.random.default_rng(seed)
        classes, inverse, counts = np.unique(y[keep], return_inverse=True, return_counts=True)
        alloc = _allocate(counts, max(1, round(fraction * keep.size)))
        alloc = np.maximum(alloc, 1)  # keep every kept class represented
        chosen = [rng.permutation(keep[inverse == c])[: alloc[c]] for c in range(len(classes))]
        keep = np.sort(np.concatenate(chosen))
    if keep.size == 0:
        raise ValueError(f"the transfer set is empty: no training examples outside classes {omit}")
    idx = torch.from_numpy(keep.astype(np.int64))
    return TransferSet(
        x=splits.x_train[idx],
        y=splits.y_train[idx] if labelled else None,
        indices=idx,
    )
