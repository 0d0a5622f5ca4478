"""What every subcommand starts from: its context (config, device, output folder) and its data."""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from pathlib import Path

from .. import distributed as dist
from ..data import Splits, TransferSet, load_dataset, make_transfer_set
from ..factories import is_import_path, module_of
from ..predict import resolve_device
from ..transfer import transfer_indices
from ..transfer_data import load_transfer_data
from ..user_data import load_dataset_function
from .config import RunConfig
from .parser import UsageError

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def allowed_modules(args: argparse.Namespace) -> frozenset[str]:
    """The modules the user allows to be imported, on this command line only.

    ``--allow-import`` names them (repeatable, several per flag, or space- or comma-separated);
    an import path typed as ``--teacher-arch``, ``--student-arch`` or ``--dataset`` allows its own
    module. Names in a config file (TOML) or in saved files never allow anything.

    Raises:
        UsageError: an ``--allow-import`` value that is not a module name.
    """
    allowed = set()
    for value in getattr(args, "allow_import", None) or []:
        for name in re.split(r"[\s,]+", value.strip()):
            if not _MODULE.match(name):
                raise UsageError(f"--allow-import: {name!r} is not a module name (like pkg.module)")
            allowed.add(name)
    typed = [*(getattr(args, "teacher_arch", None) or []), getattr(args, "student_arch", None),
             getattr(args, "dataset", None)]
    allowed.update(module_of(t) for t in typed if isinstance(t, str) and is_import_path(t))
    return frozenset(allowed)


class Ctx:
    """Per-command context: config, device, output folder, messages, modules allowed to import."""

    def __init__(self, cfg: RunConfig, out: Path | None, allow_imports: frozenset[str] = frozenset()):
        self.cfg, self.out = cfg, out
        self.allow_imports = allow_imports
        self.device = dist.init(resolve_device(cfg.device))  # torchrun: join the group
        self.progress = False if cfg.quiet or not dist.is_main() else None
        self.t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        """A stage message on stderr (rank 0, unless --quiet), stamped with the seconds since start."""
        if not self.cfg.quiet and dist.is_main():
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def load_data(cfg: RunConfig, allow_imports: frozenset[str] = frozenset()) -> Splits:
    """The train/val/test splits the config names (an import path's module must be allowed)."""
    if is_import_path(cfg.dataset):
        return load_dataset_function(cfg.dataset, allow_imports=allow_imports,
                                     val_fraction=cfg.val_fraction, seed=cfg.data_seed)
    return load_dataset(cfg.dataset, **cfg.data_options())


@functools.lru_cache(maxsize=1)  # the options check and the training step read it once
def _external(path: str, splits: Splits, labelled: bool) -> TransferSet:
    return load_transfer_data(path, splits, labelled=labelled)


def transfer_size(cfg: RunConfig, splits: Splits) -> int | None:
    """How many examples the students' transfer set holds, for the auto budgets (None:
    ``--transfer-data``, whose size is known only once it is read: the training split's size is
    used). The labels alone are read; bad options give None here and are reported by the checks."""
    if cfg.transfer_data is not None:
        return None
    try:
        return len(transfer_indices(splits.y_train.numpy(), splits.n_classes,
                                    fraction=cfg.transfer_fraction, omit_classes=cfg.omit_classes,
                                    seed=cfg.data_seed))
    except ValueError:
        return None


def transfer_of(cfg: RunConfig, splits: Splits) -> TransferSet:
    """The student's transfer set: ``--transfer-data``, or a share of the training data, maybe
    without classes or labels."""
    if cfg.transfer_data is not None:
        chosen = [flag for flag, on in (("--transfer-fraction", cfg.transfer_fraction != 1.0),
                                        ("--omit-classes", bool(cfg.omit_classes))) if on]
        if chosen:
            raise ValueError(f"{' and '.join(chosen)} choose(s) from the training split and do not "
                             "apply with --transfer-data; leave them out")
        return _external(cfg.transfer_data, splits, not cfg.unlabelled)
    return make_transfer_set(
        splits, fraction=cfg.transfer_fraction, omit_classes=cfg.omit_classes,
        labelled=not cfg.unlabelled, seed=cfg.data_seed,
    )
