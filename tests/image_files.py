"""Small image folders for the tests: random PNG or JPEG files in the ImageFolder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, counts: dict[str, int], *, size=(6, 5), mode="L", seed=0,
                 suffix=".png") -> None:
    """``root/<class>/img_<i><suffix>`` with random pixels; class c is brighter for larger c."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            a = np.clip(rng.integers(0, 60, shape) + 60 * c, 0, 255).astype(np.uint8)
            Image.fromarray(a, mode).save(root / name / f"img_{i}{suffix}")


def make_folder(root: Path, *, val: bool = False, **kw) -> Path:
    write_images(root / "train", {"cat": 12, "dog": 12, "owl": 12}, **kw)
    write_images(root / "test", {"cat": 4, "dog": 4, "owl": 3}, seed=1, **kw)
    if val:
        write_images(root / "val", {"cat": 2, "dog": 2, "owl": 2}, seed=2, **kw)
    return root
