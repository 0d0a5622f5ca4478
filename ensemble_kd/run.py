"""The run object: one trained model's folder and everything every trainer needs from it.

A *run* is a folder holding one model's training::

    folder/checkpoint.pt   written atomically after every epoch (format ``ensemble-kd/train-checkpoint``)
    folder/metrics.jsonl   one record per epoch
    folder/model.pt        the finished model (format ``ensemble-kd/model``)

:class:`Run` owns the rules around those files, so that teachers, students, specialists, vectorised
ensembles, the CLI and the paper scripts apply them one way:

* **identity** -- a checkpoint records what produced it (the training config's fingerprint plus the
  caller's facts: data, teachers, subset...). Resuming a checkpoint of another identity is refused.
* **resume** -- :meth:`Run.resume` returns the saved :class:`TrainState` (and rewrites the log to
  match it: the log may hold a line for an epoch whose checkpoint never landed); a log without a
  checkpoint belongs to no resumable run and is removed.
* **finished** -- a run whose ``model.pt`` exists is done: :meth:`Run.load_finished` loads it (after
  checking the facts it records) instead of training again; :meth:`Run.finish` writes it.
* **writer** -- under torchrun only one process writes; the others read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from .io import append_jsonl, atomic_write_text, read_jsonl


def run_identity(config_fingerprint: str, extra: dict | None = None) -> str:
    """The identity string a checkpoint records: the config's fingerprint and the caller's facts.

    Its form is that of ensemble-kd 0.1.0, so checkpoints written then still resume.
    """
    return json.dumps({"config": config_fingerprint, "extra": extra or {}}, sort_keys=True)


@dataclass
class TrainState:
    """Everything the training loop needs to continue after ``epoch`` (one member's state)."""

    epoch: int = 0  # last finished epoch (0: none)
    model: dict | None = None  # state_dict on the CPU
    optimizer: dict | None = None  # optimiser state_dict on the CPU
    scheduler: dict | None = None  # LR scheduler state_dict
    history: list[dict] = field(default_factory=list)  # one metrics record per finished epoch
    best_score: float = math.inf  # best validation NLL so far
    best_epoch: int = 0  # epoch of best_score (1-based; 0: none)
    bad_epochs: int = 0  # epochs since best_score improved (early stopping)
    best_state: dict | None = None  # weights of best_epoch, kept only when early stopping

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the run."""
        return bool(self.history and self.history[-1].get("stopped"))


class Run:
    """One model's run folder (see the module docstring).

    Args:
        folder: the run folder (created on the first write).
        identity: what produced the run (:func:`run_identity`); checked on resume.
        writer: whether this process writes files (False on the non-zero ranks of torchrun).
    """

    def __init__(self, folder: str | os.PathLike, identity: str = "", *, writer: bool = True):
        self.folder = Path(folder)
        self.identity = identity
        self.writer = writer

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"

    @property
    def model_path(self) -> Path:
        return self.folder / "model.pt"

    # -- finished runs ---------------------------------------------------------------------------

    def finished(self) -> bool:
        """Whether the run's model has been saved (nothing is left to train)."""
        return self.model_path.exists()

    def load_finished(
        self,
        device: str | torch.device = "cpu",
        *,
        expect: dict | None = None,
        allow_imports: Collection[str] = (),
    ) -> tuple[nn.Module, dict] | None:
        """The finished model and its metadata, or None when the run is not finished.

        Args:
            device: where to put the model.
            expect: metadata the model must record with these values (e.g. the data fingerprint);
                a key the file does not record is not checked (older files).
            allow_imports: modules the saved spec may import (see :func:`load_model`).

        Raises:
            ValueError: the saved model records other values for ``expect``'s keys.
        """
        if not self.finished():
            return None
        model, meta = load_model(self.model_path, device, allow_imports=allow_imports)
        for key, want in (expect or {}).items():
            if key in meta and meta[key] != want:
                what = "other data" if key == "data_fingerprint" else f"another {key.replace('_', ' ')}"
                raise ValueError(f"{self.model_path} was trained on {what}; use a new folder")
        return model, meta

    def finish(self, model: nn.Module, meta: dict | None = None, *,
               drop_checkpoint: bool = False) -> None:
        """Save the trained model as ``model.pt`` (atomic; only the writer writes).

        Args:
            model: the trained model (built by :func:`ensemble_kd.models.build_model`).
            meta: JSON-able facts saved beside the weights.
            drop_checkpoint: delete ``checkpoint.pt`` afterwards (it only serves to resume this
                run, which is now finished; ``metrics.jsonl`` stays).
        """
        if not self.writer:
            return
        save_model(self.model_path, model, meta)
        if drop_checkpoint:
            self.checkpoint_path.unlink(missing_ok=True)

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoint_epoch(self) -> int:
        """The last epoch saved in the checkpoint (0 when there is none)."""
        if not self.checkpoint_path.exists():
            return 0
        return int(load_checkpoint(self.checkpoint_path)["epoch"])

    def resume(self) -> TrainState | None:
        """The saved training state, or None when there is no checkpoint (a fresh start).

        Raises:
            ValueError: the checkpoint was written by a run of another identity.
            FormatError: the checkpoint is unreadable or of a newer format.
        """
        if not self.checkpoint_path.exists():
            if self.writer and self.metrics_path.exists():
                self.metrics_path.unlink()  # a log without a checkpoint belongs to no resumable run
            return None
        ck = load_checkpoint(self.checkpoint_path)
        if ck.get("identity") != self.identity:
            raise ValueError(
                f"{self.checkpoint_path} was written by a run with other settings or data; "
                "use a new output folder or --overwrite"
            )
        state = TrainState(
            epoch=int(ck["epoch"]),
            model=ck["model"],
            optimizer=ck["optimizer"],
            scheduler=ck["scheduler"],
            history=json.loads(ck["history"]),
            best_score=float(ck["best_score"]),
            best_epoch=int(ck["best_epoch"]),
            bad_epochs=int(ck["bad_epochs"]),
            best_state=ck.get("best_state"),
        )
        if self.writer:  # the log may hold a line for an epoch whose checkpoint never landed
            self._rewrite_log(state.history)
        return state

    def checkpoint(self, state: TrainState) -> None:
        """Checkpoint ``state`` atomically and append its last record to the log."""
        if not self.writer:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            self.checkpoint_path,
            {
                "identity": self.identity,
                "epoch": state.epoch,
                "model": state.model,
                "optimizer": state.optimizer,
                "scheduler": state.scheduler,
                "history": json.dumps(state.history),
                "best_score": state.best_score,
                "best_epoch": state.best_epoch,
                "bad_epochs": state.bad_epochs,
                **({"best_state": state.best_state} if state.best_state is not None else {}),
            },
        )
        if state.history:
            append_jsonl(self.metrics_path, state.history[-1])

    def log(self) -> list[dict]:
        """The epoch records of ``metrics.jsonl`` (empty when there is none)."""
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def _rewrite_log(self, history: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))
