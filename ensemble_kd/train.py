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

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist
from .batching import Batch, BatchSource, stack_batches
from .losses import LossParts, hard_loss
from .members import Members, SingleModel
from .predict import resolve_device
from .run import Run, TrainState, run_identity

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


def flushing_denormals() -> bool:
    """Whether CPU float arithmetic flushes subnormal numbers to zero in this thread now."""
    return float(torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item()) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Inside, CPU float arithmetic treats subnormal numbers (|x| < 1.2e-38 in float32) as zero.

    Adam's moment estimates of a weight whose gradient has gone to zero (a dead unit, a pixel that
    is almost always blank) shrink by beta each step into the subnormal range, where x86
    arithmetic is tens of times slower. Left alone, a third of the optimiser state of a 2x1200 MLP
    on Fashion-MNIST was subnormal after 250 epochs and an epoch took 2.6 times as long as at the
    start (``scripts/benchmark.py``, key ``denormal_flush_speedup``). Values that small change
    nothing a float32 model computes. The previous mode is restored on exit; CUDA is unaffected.

    The mode belongs to a thread, and a new thread inherits its creator's: torch's CPU worker
    threads started inside keep flushing. So a program wraps its whole ``main`` in this (the
    ``ensemble-kd`` command and the scripts do) before the first torch operation starts the pool.
    """
    before = flushing_denormals()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported and not before:
            torch.set_flush_denormal(False)


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (initial weights of models built afterwards)."""
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**62)


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
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
    """Cross-entropy on the batch's labels, mixed as its views are (teachers and baselines)."""
    if batch.y is None:
        raise ValueError("training on hard labels needs labelled data")
    return hard_loss(logits, batch.y, batch.mix)


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


def _cpu(obj):
    """Optimizer state moved to the CPU (checkpoints are device independent)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


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
        run_dir: when given, a :class:`~ensemble_kd.run.Run` folder: ``checkpoint.pt`` is written
            atomically after every epoch, ``metrics.jsonl`` gets one line per epoch, and an
            existing checkpoint is resumed.
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
    model = model.to(device)
    use_ddp = dist.active() if distributed is None else distributed
    net = None
    if use_ddp:  # torchrun: each rank takes its shard of every batch, DDP averages gradients
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    run = None
    if run_dir is not None:
        writer = not use_ddp or dist.is_main()  # who writes checkpoint and log
        run = Run(run_dir, run_identity(cfg.fingerprint(), extra_state), writer=writer)
    callback = None if on_epoch_end is None else (lambda epoch, records: on_epoch_end(records[0]))
    (result,) = train_members(
        SingleModel(model, net), [batches], [cfg], objective=objective, val=val,
        runs=None if run is None else [run], device=device, progress=progress, desc=desc,
        on_epoch_end=callback, shard_batches=use_ddp,
    )
    if use_ddp:
        dist.assert_same_weights(model)
    return result


def train_members(
    members: Members,
    batches: Sequence[BatchSource],
    configs: Sequence[TrainConfig],
    *,
    objective: Objective = default_objective,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    runs: Sequence[Run] | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    desc: str = "train",
    on_epoch_end: Callable[[int, list[dict | None]], None] | None = None,
    shard_batches: bool = False,
) -> list[TrainResult]:
    """The one training loop: N members, one optimiser, per-member logs, checkpoints and stopping.

    Member k draws its epoch permutation (and augmentation) from ``batches[k]`` with a generator
    seeded by ``(configs[k].seed, epoch)``, so a resumed run continues exactly as an uninterrupted one.

    Args:
        members: :class:`SingleModel`, or stacked members (:mod:`ensemble_kd.vectorized`).
        batches: one batch source per member, each with the same number of batches per epoch. With
            N > 1 the loop stacks the members' batches: x (N, B, ...), y (N, B).
        configs: one config per member, equal but for ``seed``.
        objective: ``(logits, batch) -> LossParts``; with N > 1 its ``loss`` is (N,), each member's
            own batch mean (the members are independent: the sum's gradient is each one's own).
        val: (x (M, ...), y (M,)) evaluated for every member after every epoch.
        runs: one :class:`~ensemble_kd.run.Run` per member (checkpoint, log, resume), or None.
        device: a resolved device or "auto", "cpu", "cuda".
        progress, desc: tqdm bar (None: only on a terminal) and its label.
        on_epoch_end: called after each epoch with (epoch, the members' records; None for members
            that had stopped early before it).
        shard_batches: DDP: each rank trains on its shard of every batch.

    Returns:
        One :class:`TrainResult` per member. A record's ``seconds`` is the member's share (1/N) of
        the epoch's time.
    """
    n = members.n
    cfgs = [c.validate() for c in configs]
    if len(cfgs) != n or len(batches) != n or (runs is not None and len(runs) != n):
        raise ValueError(f"{n} member(s) need {n} batch source(s), config(s) and run(s)")
    cfg = cfgs[0]
    for i, c in enumerate(cfgs[1:], 1):
        diff = sorted(k for k, v in vars(c).items() if k != "seed" and v != getattr(cfg, k))
        if diff:
            raise ValueError(f"configs[{i}] differs from configs[0] in {', '.join(diff)}: "
                             "the members of one run may differ only by seed")
    early = cfg.early_stopping
    if early and val is None:
        raise ValueError("early stopping needs validation data")
    device = resolve_device(device)
    srcs = [b.to(device) for b in batches]
    steps_per_epoch = len(srcs[0])
    if steps_per_epoch == 0:
        raise ValueError("the batch source yields no batch (is the data set smaller than a batch?)")
    if any(len(s) != steps_per_epoch for s in srcs):
        raise ValueError(f"the batch sources yield {[len(s) for s in srcs]} batches per epoch; "
                         "the members of one run need the same number")
    opt = _optimizer(members.parameters(), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, cfg.epochs * steps_per_epoch))
    states = _resume(members, runs, opt, sched)
    start_epoch = states[0].epoch + 1

    bar = tqdm(total=cfg.epochs, initial=start_epoch - 1, desc=desc, unit="ep",
               disable=not _show_progress(progress), leave=False, dynamic_ncols=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(flush_denormals())  # subnormal Adam moments slow CPU steps
        stack.callback(bar.close)
        for epoch in range(start_epoch, cfg.epochs + 1):
            stopped = [s.stopped for s in states]
            if all(stopped):
                break
            t0 = time.perf_counter()
            gens = [torch.Generator().manual_seed(_epoch_seed(c.seed, epoch)) for c in cfgs]
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 1)  # dropout, on every device
            members.train()
            active = None if n == 1 else torch.tensor([not s for s in stopped], device=device)
            sums = _EpochSums(n)
            for batch in _epoch_batches(srcs, gens, shard_batches):
                parts = objective(members(batch.x), batch)
                opt.zero_grad(set_to_none=True)
                if active is None:
                    parts.loss.backward()
                else:  # a member stopped early gets no gradient (its best weights return at the end)
                    torch.where(active, parts.loss, 0.0).sum().backward()
                opt.step()
                sched.step()
                sums.add(parts, batch.idx.shape[-1])  # examples per member
            means = sums.means(shard_batches)  # (N, 3)
            seconds = (time.perf_counter() - t0) / n
            val_metrics = None
            if val is not None:
                val_logits = members.val_logits(val[0], device)  # (N, M, C)
                val_metrics = [evaluate_logits(v, val[1].cpu()) for v in val_logits]
            opt_state = _cpu(opt.state_dict()) if runs is not None else None
            records: list[dict | None] = [None] * n
            for k, st in enumerate(states):
                if stopped[k]:
                    continue
                loss, soft, hard = means[k]
                if not math.isfinite(loss):
                    who = "training" if n == 1 else f"member {k}"
                    raise FloatingPointError(
                        f"{who} diverged in epoch {epoch} (loss {loss}); lower the learning rate"
                    )
                record = {"epoch": epoch, "loss": loss, "soft": soft, "hard": hard,
                          "lr": opt.param_groups[0]["lr"], "seconds": seconds}
                if val_metrics is not None:
                    v = val_metrics[k]
                    record.update(val_acc=v["acc"], val_nll=v["nll"])
                    if v["nll"] < st.best_score:
                        st.best_score, st.best_epoch, st.bad_epochs = v["nll"], epoch, 0
                        if early:
                            st.best_state = members.member_state(k)
                    else:
                        st.bad_epochs += 1
                    if early and st.bad_epochs >= early:
                        record["stopped"] = True
                st.epoch = epoch
                st.history.append(record)
                records[k] = record
                if runs is not None:
                    st.model = members.member_state(k)
                    st.optimizer = members.member_optimizer_state(opt_state, k)
                    st.scheduler = sched.state_dict()
                    runs[k].checkpoint(st)
            bar.update(1)
            shown = next(r for r in records if r is not None)
            bar.set_postfix({k: f"{shown[k]:.4f}" for k in ("loss", "val_acc") if k in shown},
                            refresh=False)
            if on_epoch_end is not None:
                on_epoch_end(epoch, records)

    results = []
    for k, (model, st) in enumerate(zip(members.models(), states, strict=True)):
        if early and st.best_state is not None:
            members.load_member_state(k, st.best_state)
            best_epoch = st.best_epoch
        else:
            best_epoch = len(st.history)
        results.append(TrainResult(model.eval(), st.history, best_epoch))
    return results


def _resume(members: Members, runs: Sequence[Run] | None, opt, sched) -> list[TrainState]:
    """Each member's state: loaded from its run's checkpoint (all or none), else fresh."""
    n = members.n
    if runs is None:
        return [TrainState() for _ in range(n)]
    saved = [run.resume() for run in runs]
    if all(s is None for s in saved):
        return [TrainState() for _ in range(n)]
    if any(s is None for s in saved):
        missing = [str(r.checkpoint_path) for r, s in zip(runs, saved, strict=True) if s is None]
        raise ValueError(f"some members have a checkpoint and others not ({', '.join(missing)}); "
                         "resume them one after another")
    epochs = sorted({s.epoch for s in saved})
    if len(epochs) != 1:
        raise ValueError(f"the members' checkpoints stop after different epochs ({epochs}); "
                         "resume them one after another")
    for k, s in enumerate(saved):
        members.load_member_state(k, s.model)
    opt.load_state_dict(members.stacked_optimizer_state([s.optimizer for s in saved]))
    sched.load_state_dict(saved[0].scheduler)
    return saved


def _epoch_batches(srcs: Sequence[BatchSource], gens: Sequence[torch.Generator], shard: bool):
    """One epoch of batches: each member's own, stacked (x (N, B, ...)) when N > 1."""
    if len(srcs) == 1 and not shard:
        return srcs[0].epoch(gens[0])  # the common case: no wrapper between source and loop
    if len(srcs) == 1:
        return _sharded(srcs[0].epoch(gens[0]))
    return (stack_batches(member_batches) for member_batches in
            zip(*(s.epoch(g) for s, g in zip(srcs, gens, strict=True)), strict=True))


def _sharded(batches):
    """DDP: this rank's shard of every batch."""
    for batch in batches:
        if len(batch.idx) < dist.world():
            continue  # a rank would get an empty shard (NaN mean): skip it on every rank
        yield batch.rows(dist.shard(len(batch.idx)))


class _EpochSums:
    """Example-weighted running sums of (loss, soft, hard) over an epoch, per member.

    Added up on the training device as the steps go (a few tiny kernels a step, no sync). Keeping
    every step's scalars until the end of the epoch instead left thousands of small allocations
    among the steps' large temporaries: the heap fragmented and resident memory grew by about
    0.8 MB a step (3.3 GiB at the end of one epoch over a streamed cache of a million examples).
    """

    def __init__(self, n: int):
        self.n, self.sums, self.total = n, None, 0

    def add(self, parts: LossParts, size: int) -> None:
        """One step's parts (scalars, or (N,) each) over ``size`` examples per member."""
        loss = parts.loss.detach()
        hard = torch.zeros_like(loss) if parts.hard is None else parts.hard.detach()
        step = torch.stack([loss, parts.soft.detach(), hard]).double()  # (3,) or (3, N)
        if self.sums is None:
            self.sums = step * size
        else:
            self.sums.add_(step, alpha=size)
        self.total += size

    def means(self, reduce: bool) -> list:
        """Means of (loss, soft, hard) per member: N lists of 3 (NaN without steps). ``reduce``:
        DDP, every rank's shard counts."""
        if self.sums is None:
            return [[math.nan] * 3 for _ in range(self.n)]
        sums = torch.cat([self.sums.reshape(3 * self.n),
                          torch.tensor([float(self.total)], dtype=torch.float64,
                                       device=self.sums.device)])  # (3N + 1,)
        if reduce:
            torch.distributed.all_reduce(sums)
        total = max(float(sums[-1]), 1.0)
        return (sums[:-1].reshape(3, self.n).T / total).tolist()
