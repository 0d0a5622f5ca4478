"""Image folders in the torchvision ``ImageFolder`` layout, read with Pillow into memory.

Layout (``--dataset folder --data-path DIR``)::

    DIR/train/<class>/*.png|jpg|...   one folder per class; the folder names are the class names
    DIR/test/<class>/...              classes known to training (a class may be missing)
    DIR/val/<class>/...               optional; without it the validation split is carved out of
                                      train, seeded and stratified, as for every other data set

Every image becomes float32 in [0, 1], laid out (N, C, H, W). Colour: when every image of every
split is grayscale (Pillow modes 1, L, LA, I, I;16, F) the inputs have one channel; when any image
has colour, every image is converted to RGB (three channels; a gray image repeats its channel).
An alpha channel is dropped. Sizes: all images must have one size, unless ``image_size`` is given,
when each is resized (bilinear) to ``image_size`` x ``image_size`` pixels.

Hidden files (names starting with ``.``) are skipped; every other file in a class folder must be an
image Pillow reads. Every problem (a file that is not an image, mixed sizes, an empty class folder,
a test class unknown to training) is a ``ValueError`` of one line naming the file or folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .splits import Splits, make_splits

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass
class ImageList:
    """The image files of one split (or of an unlabelled folder), found but not yet decoded.

    Attributes:
        files: the image files, in class then file-name order.
        labels: one class index per file, or None for an unlabelled folder.
    """

    files: list[Path]
    labels: list[int] | None


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def class_folders(folder: Path) -> list[Path]:
    """The class folders of a split folder (sorted); a file beside them is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    entries = _visible(folder)
    strays = [p for p in entries if not p.is_dir()]
    if strays:
        raise ValueError(f"{strays[0]}: a file where class folders are expected "
                         f"({folder} must hold one folder per class)")
    if not entries:
        raise ValueError(f"{folder}: no class folders")
    return entries


def list_split(folder: Path, class_names: Sequence[str] | None = None) -> tuple[ImageList, list[str]]:
    """The labelled images under ``folder/<class>/``.

    Args:
        folder: a split folder (``DIR/train``, ``DIR/test``, ...).
        class_names: the training classes; None for the training split itself (its folders
            define the classes). A folder outside ``class_names`` is an error.

    Returns:
        (the images, the class names).
    """
    folders = class_folders(folder)
    names = [p.name for p in folders] if class_names is None else list(class_names)
    index = {n: i for i, n in enumerate(names)}
    files, labels = [], []
    for sub in folders:
        if sub.name not in index:
            raise ValueError(f"{sub}: class {sub.name!r} is not one of the training classes "
                             f"({', '.join(names)})")
        found = _visible(sub)
        bad = [p for p in found if p.is_dir()]
        if bad:
            raise ValueError(f"{bad[0]}: a folder inside a class folder (expected image files)")
        if not found:
            raise ValueError(f"{sub}: empty class folder (no images)")
        files += found
        labels += [index[sub.name]] * len(found)
    return ImageList(files, labels), names


def list_unlabelled(folder: Path) -> ImageList:
    """The images directly in ``folder`` (an unlabelled set: no class folders)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = _visible(folder)
    if not found:
        raise ValueError(f"{folder}: no images")
    bad = [p for p in found if p.is_dir()]
    if bad:
        raise ValueError(f"{bad[0]}: a folder among unlabelled images (put every image directly "
                         f"in {folder}, or every image in a class folder)")
    return ImageList(found, None)


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode of an image file, read without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception:  # Pillow raises many types for a file that is not an image it knows
        raise ValueError(f"{path}: not an image Pillow can read") from None


def scan(lists: Sequence[ImageList], image_size: int | None) -> tuple[int, tuple[int, int]]:
    """Check sizes across every list; returns (channels, (height, width)) of the inputs.

    Raises:
        ValueError: a file that is not an image, or images of two sizes without ``image_size``.
    """
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1 pixel, got {image_size}")
    first, size, gray = None, None, True
    for files in lists:
        for path in files.files:
            wh, mode = _header(path)
            gray = gray and mode in GRAY_MODES
            if size is None:
                first, size = path, wh
            elif wh != size and image_size is None:
                raise ValueError(f"{path}: {wh[0]}x{wh[1]} pixels but {first} is {size[0]}x{size[1]}; "
                                 "pass --image-size to resize every image to one size")
    if size is None:
        raise ValueError("no images found")
    hw = (image_size, image_size) if image_size is not None else (size[1], size[0])
    return (1 if gray else 3), hw


def _pixels(path: Path, channels: int, hw: tuple[int, int], resize: bool) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if channels == 1 and im.mode.startswith("I"):  # 16-bit (or 32-bit) grayscale
                im = im.convert("I")
                scale = 65535.0
            elif channels == 1 and im.mode == "F":
                scale = 1.0
            else:
                im = im.convert("L" if channels == 1 else "RGB")
                scale = 255.0
            if resize and im.size != (hw[1], hw[0]):
                im = im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / scale
    except Exception:  # Pillow's decoders raise many types for a damaged file
        raise ValueError(f"{path}: not an image Pillow can read (truncated or damaged)") from None
    a = np.clip(a, 0.0, 1.0)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode(files: ImageList, channels: int, hw: tuple[int, int], resize: bool) -> torch.Tensor:
    """Every image of ``files`` as one float32 tensor (N, channels, H, W) in [0, 1]."""
    out = np.empty((len(files.files), channels, *hw), np.float32)
    for i, path in enumerate(files.files):
        out[i] = _pixels(path, channels, hw, resize)
    return torch.from_numpy(out)


def load_image_folder(path: str | Path | None, val_fraction: float, seed: int, *,
                      image_size: int | None = None) -> Splits:
    """The data set in the image folder ``path`` (layout in the module docstring).

    Args:
        path: the folder holding ``train/`` and ``test/`` (and optionally ``val/``).
        val_fraction: share of the training images held out for validation when there is no
            ``val/`` folder, in (0, 1).
        seed: drives only that validation split.
        image_size: resize every image to this many pixels square; None keeps the images' own
            size (which must then be one size).

    Raises:
        FileNotFoundError: no such folder, or no ``train/`` or ``test/`` in it.
        ValueError: one line naming the file or folder at fault.
    """
    if path is None:
        raise ValueError("the folder data set needs --data-path DIR (a folder with train/<class>/ "
                         "and test/<class>/ image folders)")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"{root / part}: no such folder (an image folder data set has "
                                    "train/<class>/ and test/<class>/)")
    train, names = list_split(root / "train")
    test, _ = list_split(root / "test", names)
    val = list_split(root / "val", names)[0] if (root / "val").is_dir() else None
    lists = [train, test] + ([val] if val is not None else [])
    channels, hw = scan(lists, image_size)
    resize = image_size is not None
    x_train, x_test = decode(train, channels, hw, resize), decode(test, channels, hw, resize)
    y_train, y_test = np.asarray(train.labels, np.int64), np.asarray(test.labels, np.int64)
    if val is None:
        return make_splits("folder", x_train, y_train, x_test, y_test, names,
                           val_fraction=val_fraction, seed=seed)
    return Splits(name="folder", x_train=x_train, y_train=torch.from_numpy(y_train),
                  x_val=decode(val, channels, hw, resize),
                  y_val=torch.as_tensor(val.labels, dtype=torch.int64),
                  x_test=x_test, y_test=torch.from_numpy(y_test), class_names=names)
