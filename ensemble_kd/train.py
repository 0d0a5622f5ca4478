"""The one training loop, shared by teachers, distilled students and specialists.

What differs between them is only the *objective* (a function of the model's logits and the batch:
cross-entropy on labels, the distillation loss against cached or online teacher logits, or the
specialist's dustbin loss) and the *batch source* (plain shuffled batches, or the specialists'
half-and-half mix). Everything else -- optimiser, schedule, validation, early stopping, progress bar,
``metrics.jsonl``, atomic per-epoch checkpoints and resume -- lives here once.

Reproducibility: every epoch draws its permutation, augmentation and dropout from generators seeded
by ``(seed, epoch)``, so a run resumed from the checkpoint of epoch e continues exactly as the
uninterrupted run would have (bit for bit on CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist
from .batching import Batch, BatchSource
from .checkpoint import load_checkpoint, save_checkpoint
from .io import append_jsonl, atomic_write_text
from .losses import LossParts, hard_loss
from .predict import predict_logits, resolve_device

Objective = Callable[[torch.Tensor, Batch], LossParts]


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (the same for teachers, students and specialists)."""

    epochs: int = 20  # passes over the batch source
    batch_size: int = 128  # examples per step
    optimizer: str = "adam"  # "adam" or "sgd" (SGD with Nesterov momentum)
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # L2 penalty through the optimiser
    schedule: str = (
        "cosine"  # "constant", "cosine" (to 0 over the run) or "step" (x0.1 at 50%, 75%)
    )
    early_stopping: int = 0  # patience in epochs without a better validation NLL; 0 = off
    seed: int = (
        0  # drives shuffling, augmentation and dropout (initial weights: see seed_everything)
    )

    def validate(self) -> TrainConfig:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("constant", "cosine", "step"):
            raise ValueError(
                f"schedule must be 'constant', 'cosine' or 'step', got {self.schedule!r}"
            )
        if self.early_stopping < 0:
            raise ValueError(f"early_stopping must be >= 0, got {self.early_stopping}")
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(
            json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        ).hexdigest()


class TrainResult(NamedTuple):
    model: nn.Module  # trained (best validation epoch when early stopping), eval mode
    history: list[dict]  # one metrics record per epoch
    best_epoch: int  # epoch whose weights were returned (1-based)


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (initial weights of models built afterwards)."""
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**62)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    if cfg.schedule == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    if cfg.schedule == "step":
        return lambda s: 0.1 ** ((s >= 0.5 * total_steps) + (s >= 0.75 * total_steps))
    return lambda s: 1.0


def default_objective(logits: torch.Tensor, batch: Batch) -> LossParts:
    """Cross-entropy on the batch's labels (teachers and hard-label baselines)."""
    if batch.y is None:
        raise ValueError("training on hard labels needs labelled data")
    return hard_loss(logits, batch.y)


@torch.no_grad()
def evaluate_logits(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy and mean negative log-likelihood of logits (N, C) against labels (N,)."""
    logp = torch.log_softmax(logits.float(), -1)
    return {
        "acc": float((logits.argmax(-1) == y).float().mean()),
        "nll": float(-logp.gather(1, y[:, None].long()).mean()),
    }


def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return progress


def train(
    model: nn.Module,
    batches: BatchSource,
    config: TrainConfig,
    *,
    objective: Objective = default_objective,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    run_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    desc: str = "train",
    on_epoch_end: Callable[[dict], None] | None = None,
    extra_state: dict | None = None,
    distributed: bool | None = None,
) -> TrainResult:
    """Train ``model`` on ``batches`` with ``objective``; checkpoint, log and resume in ``run_dir``.

    Args:
        model: maps (B, *input_shape) to logits (B, C); its current weights are the start.
        batches: a batch source (:class:`~ensemble_kd.batching.TensorBatches` or alike).
        config: hyperparameters.
        objective: ``(logits (B, C), batch) -> LossParts``; default cross-entropy on labels.
        val: (x (N, ...), y (N,)) evaluated each epoch (accuracy, NLL) in the model's label space;
            needed for early stopping.
        run_dir: when given, ``checkpoint.pt`` is written atomically after every epoch,
            ``metrics.jsonl`` gets one line per epoch, and an existing checkpoint is resumed.
        device: "auto", "cpu" or "cuda".
        progress: tqdm bar; None = only when stderr is a terminal.
        desc: label of the progress bar.
        on_epoch_end: called with each epoch's metrics record (after the checkpoint is written).
        extra_state: JSON-able facts that must match on resume (e.g. which data, which teachers).
        distributed: wrap the model in DistributedDataParallel (each rank a shard of every batch;
            rank 0 writes the files). None: when running under torchrun. False: this process
            trains the model alone (teachers and specialists shared out across ranks).

    Returns:
        :class:`TrainResult` with the trained model in eval mode.
    """
    cfg = config.validate()
    device = resolve_device(device)
    if early := cfg.early_stopping:
        if val is None:
            raise ValueError("early stopping needs validation data")
    model = model.to(device)
    net = model
    use_ddp = dist.active() if distributed is None else distributed
    writer = not use_ddp or dist.is_main()  # who writes checkpoint and log
    if use_ddp:  # torchrun: each rank takes its shard of every batch, DDP averages gradients
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    src = batches.to(device)
    steps_per_epoch = len(src)
    if steps_per_epoch == 0:
        raise ValueError("the batch source yields no batch (is the data set smaller than a batch?)")
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, cfg.epochs * steps_per_epoch))
    identity = json.dumps({"config": cfg.fingerprint(), "extra": extra_state or {}}, sort_keys=True)

    history: list[dict] = []
    start_epoch, best_score, best_epoch, bad_epochs, best_state = 1, math.inf, 0, 0, None
    ckpt_path = metrics_path = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
        if ckpt_path.exists():
            ck = load_checkpoint(ckpt_path)
            if ck.get("identity") != identity:
                raise ValueError(
                    f"{ckpt_path} was written by a run with other settings or data; "
                    "use a new output folder or --overwrite"
                )
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            history = json.loads(ck["history"])
            start_epoch = int(ck["epoch"]) + 1
            best_score, best_epoch = float(ck["best_score"]), int(ck["best_epoch"])
            bad_epochs = int(ck["bad_epochs"])
            best_state = ck.get("best_state")
            # the log may hold a line for an epoch whose checkpoint never landed: rewrite it
            if writer:
                atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        elif metrics_path.exists() and writer:
            metrics_path.unlink()  # a log without a checkpoint belongs to no resumable run

    stopped = bool(history and history[-1].get("stopped"))
    bar = tqdm(
        total=cfg.epochs,
        initial=start_epoch - 1,
        desc=desc,
        unit="ep",
        disable=not _show_progress(progress),
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 1)  # dropout, on every device
            model.train()
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, soft, hard
            n_seen = 0
            for batch in src.epoch(gen):
                if net is not model:
                    sl = dist.shard(len(batch.idx))
                    batch = Batch(batch.x[sl], None if batch.y is None else batch.y[sl], batch.idx[sl])
                logits = net(batch.x)
                parts = objective(logits, batch)
                opt.zero_grad(set_to_none=True)
                parts.loss.backward()
                opt.step()
                sched.step()
                b = len(batch.idx)
                hard = parts.hard if parts.hard is not None else torch.zeros((), device=device)
                sums += torch.stack([parts.loss.detach(), parts.soft.detach(), hard.detach()]) * b
                n_seen += b
            if net is not model:
                sums = torch.cat([sums, sums.new_tensor([n_seen])])
                torch.distributed.all_reduce(sums)
                sums, n_seen = sums[:3], int(sums[3].item())
            means = (sums / max(n_seen, 1)).tolist()
            if not all(math.isfinite(m) for m in means):
                raise FloatingPointError(
                    f"training diverged in epoch {epoch} (loss {means[0]}); lower the learning rate"
                )
            record = {
                "epoch": epoch,
                "loss": means[0],
                "soft": means[1],
                "hard": means[2],
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            if val is not None:
                v = evaluate_logits(predict_logits(model, val[0], device=device), val[1].cpu())
                record.update(val_acc=v["acc"], val_nll=v["nll"])
                if v["nll"] < best_score:
                    best_score, best_epoch, bad_epochs = v["nll"], epoch, 0
                    if early:
                        best_state = {
                            k: t.detach().cpu().clone() for k, t in model.state_dict().items()
                        }
                else:
                    bad_epochs += 1
                if early and bad_epochs >= early:
                    record["stopped"] = True
                    stopped = True
            history.append(record)
            if ckpt_path is not None and writer:
                save_checkpoint(
                    ckpt_path,
                    {
                        "identity": identity,
                        "epoch": epoch,
                        "model": {k: t.detach().cpu() for k, t in model.state_dict().items()},
                        "optimizer": _cpu(opt.state_dict()),
                        "scheduler": sched.state_dict(),
                        "history": json.dumps(history),
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        **({"best_state": best_state} if best_state is not None else {}),
                    },
                )
                append_jsonl(metrics_path, record)
            bar.update(1)
            bar.set_postfix(
                {k: f"{record[k]:.4f}" for k in ("loss", "val_acc") if k in record}, refresh=False
            )
            if on_epoch_end is not None:
                on_epoch_end(record)
    finally:
        bar.close()

    if use_ddp:
        dist.assert_same_weights(model)
    if early and best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    return TrainResult(model.eval(), history, best_epoch)


def _cpu(obj):
    """Optimizer state moved to the CPU (checkpoints are device independent)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that keeps the ``spec`` attribute."""
    return copy.deepcopy(model)
