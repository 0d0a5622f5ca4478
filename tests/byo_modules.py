"""Source of the user modules that the bring-your-own tests import from a temporary folder.

Each module has a name no other test uses, so that whether it was imported can be read from
``sys.modules``; :func:`forget` removes them again.
"""

from __future__ import annotations

import sys
from pathlib import Path

GOOD = "ekd_byo_models"  # factories and a data set that work
BAD = "ekd_byo_bad"  # factories and data sets that fail in every way the catalogue names
MARKER = "ekd_byo_marker"  # writes MARKER_FILE (beside itself) when imported

GOOD_SOURCE = '''
import math

import numpy as np
from torch import nn


class Net(nn.Module):
    def __init__(self, d, n, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU())
        self.head = nn.Linear(width, n)

    def forward(self, x):
        return self.head(self.body(x))


def make(input_shape, n_classes, width=16):
    return Net(math.prod(input_shape), n_classes, width)


def make_wide(input_shape, n_classes, width=24):
    return Net(math.prod(input_shape), n_classes, 2 * width)


def make_small(input_shape, n_classes):
    return Net(math.prod(input_shape), n_classes, 8)


def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target
    return {"X_train": x[:1200], "y_train": y[:1200], "X_test": x[1200:], "y_test": y[1200:],
            "class_names": [f"digit {i}" for i in range(10)]}
'''

BAD_SOURCE = '''
import math

from torch import nn


def raises(input_shape, n_classes):
    raise RuntimeError("no GPU here")


def not_module(input_shape, n_classes):
    return 42


def wrong_classes(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 3))


def wrong_inputs(input_shape, n_classes):
    return nn.Linear(7, n_classes)


def good(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))


NOT_CALLABLE = 3


def data_not_dict():
    return [1, 2, 3]


def data_missing():
    return {"X_train": [[0.0]], "y_train": [0]}


def data_raises():
    raise OSError("the share is not mounted")


def data_mismatch():
    import numpy as np
    x = np.zeros((10, 4), np.float32)
    return {"X_train": x, "y_train": np.arange(9) % 3, "X_test": x, "y_test": np.arange(10) % 3}
'''

MARKER_SOURCE = '''
from pathlib import Path

(Path(__file__).parent / "IMPORTED").write_text("the module ran")

from ekd_byo_models import make  # noqa: E402,F401
'''

MARKER_FILE = "IMPORTED"


def write_modules(folder: Path) -> Path:
    """Write the three modules into ``folder`` (to be put on ``sys.path``); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in ((GOOD, GOOD_SOURCE), (BAD, BAD_SOURCE), (MARKER, MARKER_SOURCE)):
        (folder / f"{name}.py").write_text(source)
    return folder


def forget() -> None:
    """Drop the modules from ``sys.modules`` (the next import runs them again)."""
    for name in (GOOD, BAD, MARKER):
        sys.modules.pop(name, None)
