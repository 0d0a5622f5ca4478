"""What every subcommand starts from: its context (config, device, output folder) and its data."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import distributed as dist
from ..data import Splits, TransferSet, load_dataset, make_transfer_set
from ..predict import resolve_device
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


def transfer_of(cfg: RunConfig, splits: Splits) -> TransferSet:
    """The student's transfer set: a share of the training data, maybe without classes or labels."""
    return make_transfer_set(
        splits, fraction=cfg.transfer_fraction, omit_classes=cfg.omit_classes,
        labelled=not cfg.unlabelled, seed=cfg.data_seed,
    )
