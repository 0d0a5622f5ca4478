"""Train N same-architecture models at once as one vectorised model (``torch.func``).

The members' weights are stacked along a new leading dimension (``stack_module_state``) and one
forward pass runs all of them (``vmap`` over ``functional_call``): N small matrix products become
one batched product, and the Python, optimiser and kernel-launch overhead of a step is paid once
instead of N times. On a GPU, where a small MLP's step is launch bound, that is the whole cost; on a
CPU the step is compute bound and the gain is small (see ``docs/performance.md``).

Each member keeps its own identity: its own seed, so its own per-epoch permutation (and
augmentation) drawn exactly as :func:`ensemble_kd.train.train` draws them; its own loss, gradient,
optimiser state, validation, early stopping, ``metrics.jsonl`` and ``checkpoint.pt``. The
checkpoints have the format :func:`~ensemble_kd.train.train` writes, so a member interrupted here
can be resumed by the sequential loop and the other way round. Adam and SGD act elementwise, so one
optimiser over the stacked weights equals N optimisers over the members' weights; what differs from
N sequential runs is only the rounding of the batched matrix products (and, with dropout, which
masks are drawn: they come from one generator for the whole stack).

Only models without buffers can be stacked (batch norm's running statistics cannot be updated inside
``vmap``): the MLPs, not the convnets.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from .batching import BatchSource
from .checkpoint import load_checkpoint, save_checkpoint
from .io import append_jsonl, atomic_write_text
from .predict import resolve_device
from .train import (
    TrainConfig,
    TrainResult,
    _cpu,
    _epoch_seed,
    _lr_lambda,
    _optimizer,
    _show_progress,
    evaluate_logits,
)


def can_vectorize(models: Sequence[nn.Module]) -> bool:
    """Whether ``models`` can be trained as one stacked model.

    True when there are at least two, all have the same architecture (the same ``spec`` when they
    carry one, else the same class) with the same parameter names and shapes, and none has buffers.
    """
    if len(models) < 2:
        return False
    first = models[0]
    shapes = [(n, p.shape) for n, p in first.named_parameters()]
    for m in models:
        if type(m) is not type(first) or getattr(m, "spec", None) != getattr(first, "spec", None):
            return False
        if any(True for _ in m.buffers()):
            return False
        if [(n, p.shape) for n, p in m.named_parameters()] != shapes:
            return False
    return True


def _check_configs(configs: Sequence[TrainConfig]) -> list[TrainConfig]:
    cfgs = [c.validate() for c in configs]
    ref = {k: v for k, v in vars(cfgs[0]).items() if k != "seed"}
    for i, c in enumerate(cfgs):
        other = {k: v for k, v in vars(c).items() if k != "seed"}
        if other != ref:
            diff = sorted(k for k in ref if ref[k] != other[k])
            raise ValueError(
                f"configs[{i}] differs from configs[0] in {', '.join(diff)}: vectorised members "
                "may differ only by seed"
            )
    return cfgs


def _member_optimizer_state(state: dict, k: int, n: int) -> dict:
    """Member k's slice of an optimiser state over stacked weights (member tensors: (N, ...))."""
    out = {}
    for pid, st in state["state"].items():
        out[pid] = {
            name: (v[k].clone() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n
                   else (v.clone() if isinstance(v, torch.Tensor) else v))
            for name, v in st.items()
        }
    return {"state": out, "param_groups": copy.deepcopy(state["param_groups"])}


def _stacked_optimizer_state(states: Sequence[dict], like: dict) -> dict:
    """Inverse of :func:`_member_optimizer_state`: stack the members' slices again."""
    out = {}
    for pid, st in like["state"].items():
        out[pid] = {}
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim():
                out[pid][name] = torch.stack([s["state"][pid][name] for s in states])
            else:
                out[pid][name] = states[0]["state"][pid][name]
    return {"state": out, "param_groups": copy.deepcopy(states[0]["param_groups"])}


def train_vectorized(
    models: Sequence[nn.Module],
    batches: Sequence[BatchSource],
    configs: Sequence[TrainConfig],
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    run_dirs: Sequence[str | os.PathLike] | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    desc: str = "ensemble",
    extra_states: Sequence[dict] | None = None,
    on_epoch_end: Callable[[int, list[dict | None]], None] | None = None,
) -> list[TrainResult]:
    """Train N models of one architecture together on cross-entropy, as N runs of ``train`` would.

    Member k draws its epoch permutation (and augmentation) from ``batches[k]`` with the generator
    :func:`ensemble_kd.train.train` would seed from ``configs[k].seed``, so with the same initial
    weights the result matches N sequential runs up to float rounding (exactly the same batches).

    Args:
        models: N models that :func:`can_vectorize` accepts; their current weights are the start.
        batches: N batch sources with the same number of batches (and batch sizes) per epoch,
            labelled; usually the same data, each shuffled by its own member's seed.
        configs: N configs equal but for ``seed``.
        val: (x (M, ...), y (M,)) evaluated for every member each epoch; needed for early stopping.
        run_dirs: N folders receiving each member's ``checkpoint.pt`` and ``metrics.jsonl`` (the
            formats of :func:`~ensemble_kd.train.train`); existing checkpoints are resumed when all
            members stopped after the same epoch.
        device: "auto", "cpu" or "cuda".
        progress: tqdm bar; None = only when stderr is a terminal.
        desc: label of the progress bar.
        extra_states: N dicts of JSON-able facts that must match on resume (as in ``train``).
        on_epoch_end: called after each epoch with (epoch, the members' records; None for members
            that had stopped early before it).

    Returns:
        N :class:`~ensemble_kd.train.TrainResult` (the given model objects, trained, in eval mode).
        A record's ``seconds`` is the member's share (1/N) of the joint epoch's time.
    """
    n = len(models)
    if n == 0:
        raise ValueError("no models to train")
    if not (len(batches) == len(configs) == n):
        raise ValueError(f"got {n} models, {len(batches)} batch sources and {len(configs)} configs")
    if n > 1 and not can_vectorize(models):
        raise ValueError(
            "the models cannot be vectorised: they must share one architecture and hold no buffers "
            "(batch norm); train them one after another with ensemble_kd.train.train"
        )
    cfgs = _check_configs(configs)
    cfg = cfgs[0]
    extra_states = list(extra_states) if extra_states is not None else [{} for _ in range(n)]
    if len(extra_states) != n or (run_dirs is not None and len(run_dirs) != n):
        raise ValueError("extra_states and run_dirs need one entry per model")
    early = cfg.early_stopping
    if early and val is None:
        raise ValueError("early stopping needs validation data")
    device = resolve_device(device)
    models = [m.to(device) for m in models]
    srcs = [b.to(device) for b in batches]
    steps_per_epoch = len(srcs[0])
    if steps_per_epoch == 0:
        raise ValueError("the batch source yields no batch (is the data set smaller than a batch?)")
    if any(len(s) != steps_per_epoch for s in srcs):
        raise ValueError(f"the batch sources yield {[len(s) for s in srcs]} batches per epoch; "
                         "vectorised members need the same number")

    # A weightless copy of one member: functional_call runs it with the stacked members' weights.
    base = copy.deepcopy(models[0]).to("meta")
    stacked, _ = stack_module_state(list(models))  # name -> (N, *shape)
    names = list(stacked)
    holder = nn.ParameterList([nn.Parameter(stacked[k].detach()) for k in names])
    params = dict(zip(names, holder, strict=True))

    def one(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, p, (x,))

    # "different": each member draws its own dropout masks
    forward = vmap(one, randomness="different")  # ({N}, (N, B, ...)) -> (N, B, C)
    forward_shared = vmap(one, in_dims=(0, None))  # ({N}, (B, ...)) -> (N, B, C), eval only
    opt = _optimizer(holder, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, cfg.epochs * steps_per_epoch))
    identities = [
        json.dumps({"config": c.fingerprint(), "extra": e or {}}, sort_keys=True)
        for c, e in zip(cfgs, extra_states, strict=True)
    ]

    histories: list[list[dict]] = [[] for _ in range(n)]
    best = [[math.inf, 0, 0, None] for _ in range(n)]  # score, epoch, bad epochs, state
    stopped = [False] * n
    start_epoch = 1
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else None
    if dirs is not None:
        start_epoch = _resume(dirs, identities, holder, names, opt, sched, histories, best, stopped)

    def member_state(k: int) -> dict[str, torch.Tensor]:
        return {name: p[k].detach().cpu().clone() for name, p in params.items()}

    bar = tqdm(total=cfg.epochs, initial=start_epoch - 1, desc=desc, unit="ep",
               disable=not _show_progress(progress), leave=False, dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if all(stopped):
                break
            t0 = time.perf_counter()
            gens = [torch.Generator().manual_seed(_epoch_seed(c.seed, epoch)) for c in cfgs]
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 1)  # dropout of the whole stack
            base.train()
            active = torch.tensor([not s for s in stopped], device=device)  # (N,)
            sums = torch.zeros(n, dtype=torch.float64, device=device)
            n_seen = 0
            for member_batches in zip(*(s.epoch(g) for s, g in zip(srcs, gens, strict=True)),
                                      strict=True):
                x = torch.stack([b.x for b in member_batches])  # (N, B, ...)
                if any(b.y is None for b in member_batches):
                    raise ValueError("training on hard labels needs labelled data")
                y = torch.stack([b.y for b in member_batches])  # (N, B)
                logits = forward(params, x)  # (N, B, C)
                losses = F.cross_entropy(  # (N,): each member's batch mean, as train() computes
                    logits.flatten(0, 1), y.flatten().long(), reduction="none"
                ).view(y.shape).mean(1)
                opt.zero_grad(set_to_none=True)
                # members are independent: the sum's gradient wrt member k's weights is its own
                # loss's; a member stopped early gets none (its weights are restored at the end)
                torch.where(active, losses, 0.0).sum().backward()
                opt.step()
                sched.step()
                b = y.shape[1]
                sums += losses.detach().double() * b
                n_seen += b
            means = (sums / max(n_seen, 1)).tolist()
            seconds = (time.perf_counter() - t0) / n
            val_metrics = None
            if val is not None:
                val_metrics = _evaluate(forward_shared, params, base, val, device)
            opt_state = _cpu(opt.state_dict()) if dirs is not None else None
            records: list[dict | None] = [None] * n
            for k in range(n):
                if stopped[k]:
                    continue
                if not math.isfinite(means[k]):
                    raise FloatingPointError(
                        f"member {k} diverged in epoch {epoch} (loss {means[k]}); lower the "
                        "learning rate"
                    )
                record = {"epoch": epoch, "loss": means[k], "soft": 0.0, "hard": means[k],
                          "lr": opt.param_groups[0]["lr"], "seconds": seconds}
                if val_metrics is not None:
                    v = val_metrics[k]
                    record.update(val_acc=v["acc"], val_nll=v["nll"])
                    bk = best[k]
                    if v["nll"] < bk[0]:
                        bk[0], bk[1], bk[2] = v["nll"], epoch, 0
                        if early:
                            bk[3] = member_state(k)
                    else:
                        bk[2] += 1
                    if early and bk[2] >= early:
                        record["stopped"] = True
                        stopped[k] = True
                histories[k].append(record)
                records[k] = record
                if dirs is not None:
                    _save_member(dirs[k], identities[k], epoch, member_state(k),
                                 _member_optimizer_state(opt_state, k, n),
                                 sched.state_dict(), histories[k], best[k])
                    append_jsonl(dirs[k] / "metrics.jsonl", record)
            bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch, records)
    finally:
        bar.close()

    results = []
    for k, model in enumerate(models):
        state = best[k][3] if early and best[k][3] is not None else member_state(k)
        model.load_state_dict(state)
        best_epoch = best[k][1] if early and best[k][3] is not None else len(histories[k])
        results.append(TrainResult(model.eval(), histories[k], best_epoch))
    return results


@torch.no_grad()
def _evaluate(forward_shared, params: dict, base: nn.Module, val, device,
              chunk: int = 2048) -> list[dict]:
    """Accuracy and NLL of every member on the validation set (eval mode)."""
    base.eval()
    x, y = val
    outs = []
    for i in range(0, len(x), chunk):
        outs.append(forward_shared(params, x[i : i + chunk].to(device)).float().cpu())  # (N, b, C)
    logits = torch.cat(outs, dim=1)  # (N, M, C)
    return [evaluate_logits(lk, y.cpu()) for lk in logits]


def _save_member(folder: Path, identity: str, epoch: int, model_state: dict, opt_state: dict,
                 sched_state: dict, history: list[dict], best: list) -> None:
    """One member's checkpoint, in the format of :func:`ensemble_kd.train.train`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "checkpoint.pt", {
        "identity": identity,
        "epoch": epoch,
        "model": model_state,
        "optimizer": opt_state,
        "scheduler": sched_state,
        "history": json.dumps(history),
        "best_score": best[0],
        "best_epoch": best[1],
        "bad_epochs": best[2],
        **({"best_state": best[3]} if best[3] is not None else {}),
    })


def _resume(dirs: list[Path], identities: list[str], holder: nn.ParameterList, names: list[str],
            opt: torch.optim.Optimizer, sched, histories: list, best: list, stopped: list) -> int:
    """Load the members' checkpoints (all or none); return the first epoch still to run."""
    ckpts = [d / "checkpoint.pt" for d in dirs]
    have = [p.exists() for p in ckpts]
    if not any(have):
        for d in dirs:  # a log without a checkpoint belongs to no resumable run
            (d / "metrics.jsonl").unlink(missing_ok=True)
        return 1
    if not all(have):
        missing = [str(p) for p, h in zip(ckpts, have, strict=True) if not h]
        raise ValueError(f"some members have a checkpoint and others not ({', '.join(missing)}); "
                         "resume them one after another")
    cks = [load_checkpoint(p) for p in ckpts]
    for p, ck, ident in zip(ckpts, cks, identities, strict=True):
        if ck.get("identity") != ident:
            raise ValueError(f"{p} was written by a run with other settings or data; "
                             "use a new output folder or --overwrite")
    epochs = {int(ck["epoch"]) for ck in cks}
    if len(epochs) != 1:
        raise ValueError(f"the members' checkpoints stop after different epochs "
                         f"({sorted(epochs)}); resume them one after another")
    with torch.no_grad():
        for i, name in enumerate(names):
            holder[i].copy_(torch.stack([ck["model"][name] for ck in cks]))
    like = opt.state_dict()
    if cks[0]["optimizer"]["state"]:
        like = {"state": cks[0]["optimizer"]["state"], "param_groups": like["param_groups"]}
        opt.load_state_dict(_stacked_optimizer_state([ck["optimizer"] for ck in cks], like))
    sched.load_state_dict(cks[0]["scheduler"])
    for k, (d, ck) in enumerate(zip(dirs, cks, strict=True)):
        histories[k] = json.loads(ck["history"])
        best[k] = [float(ck["best_score"]), int(ck["best_epoch"]), int(ck["bad_epochs"]),
                   ck.get("best_state")]
        stopped[k] = bool(histories[k] and histories[k][-1].get("stopped"))
        # the log may hold a line for an epoch whose checkpoint never landed: rewrite it
        atomic_write_text(d / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in histories[k]))
    return epochs.pop() + 1


def checkpoint_epoch(run_dir: str | os.PathLike) -> int:
    """The last epoch saved in ``run_dir/checkpoint.pt`` (0 when there is none)."""
    path = Path(run_dir) / "checkpoint.pt"
    return int(load_checkpoint(path)["epoch"]) if path.exists() else 0
