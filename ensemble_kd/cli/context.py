"""What every subcommand starts from: its context (config, device, output folder) and its data."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from .. import distributed as dist
from ..data import Splits, TransferSet, load_dataset, make_transfer_set
from ..predict import resolve_device
from ..transfer_data import load_transfer_data
from .config import RunConfig


class Ctx:
    """Per-command context: config, device, output folder, messages."""

    def __init__(self, cfg: RunConfig, out: Path | None):
        self.cfg, self.out = cfg, out
        self.device = dist.init(resolve_device(cfg.device))  # torchrun: join the group
        self.progress = False if cfg.quiet or not dist.is_main() else None
        self.t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        """A stage message on stderr (rank 0, unless --quiet), stamped with the seconds since start."""
        if not self.cfg.quiet and dist.is_main():
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def load_data(cfg: RunConfig) -> Splits:
    """The train/val/test splits the config names."""
    return load_dataset(cfg.dataset, **cfg.data_options())


@functools.lru_cache(maxsize=1)  # the options check and the training step read it once
def _external(path: str, splits: Splits, labelled: bool) -> TransferSet:
    return load_transfer_data(path, splits, labelled=labelled)


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
