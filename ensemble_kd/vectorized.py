"""N same-architecture models as one vectorised member set of the training loop (``torch.func``).

The members' weights are stacked along a new leading dimension (``stack_module_state``) and one
forward pass runs all of them (``vmap`` over ``functional_call``): N small matrix products become
one batched product, and the Python, optimiser and kernel-launch overhead of a step is paid once
instead of N times. On a GPU, where a small MLP's step is launch bound, that is the whole cost; on a
CPU the step is compute bound and the gain is small (see ``docs/performance.md``).

:class:`StackedModels` is only a model wrapper: the one loop, :func:`ensemble_kd.train.train_members`,
drives it as it drives a single model. Each member keeps its own identity: its own seed, so its own
per-epoch permutation (and augmentation); its own loss, gradient, optimiser state, validation, early
stopping and run folder (``metrics.jsonl``, ``checkpoint.pt`` of the single-model format, so a member
interrupted here can be resumed alone and the other way round). Adam and SGD act elementwise, so one
optimiser over the stacked weights equals N optimisers over the members' weights; what differs from
N sequential runs is only the rounding of the batched matrix products (and, with dropout, which
masks are drawn: they come from one generator for the whole stack).

Only models without buffers can be stacked (batch norm's running statistics cannot be updated inside
``vmap``): the MLPs, not the convnets.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .batching import Batch, BatchSource
from .losses import LossParts
from .predict import resolve_device
from .run import Run, run_identity
from .train import TrainConfig, TrainResult, train_members


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


class StackedModels:
    """N models of one architecture as one set of stacked weights (the loop's members).

    Calling it maps x (N, B, ...) -> logits (N, B, C), member k on its own batch ``x[k]``.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device, eval_chunk: int = 2048):
        self._models = [m.to(device) for m in models]
        self.n = len(self._models)
        self.eval_chunk = eval_chunk
        # a weightless copy of one member: functional_call runs it with the stacked weights
        self.base = copy.deepcopy(self._models[0]).to("meta")
        stacked, _ = stack_module_state(list(self._models))  # name -> (N, *shape)
        self.names = list(stacked)
        self.holder = nn.ParameterList([nn.Parameter(stacked[k].detach()) for k in self.names])
        self.params = dict(zip(self.names, self.holder, strict=True))

        def one(p: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, p, (x,))

        # "different": each member draws its own dropout masks
        self.forward = vmap(one, randomness="different")  # ({N}, (N, B, ...)) -> (N, B, C)
        self.forward_shared = vmap(one, in_dims=(0, None))  # ({N}, (B, ...)) -> (N, B, C), eval

    def parameters(self):
        return self.holder.parameters()

    def train(self, mode: bool = True) -> StackedModels:
        self.base.train(mode)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.params, x)

    @torch.no_grad()
    def val_logits(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Every member's logits (N, M, C) on x (M, ...), in eval mode, on the CPU."""
        was = self.base.training
        self.base.eval()
        outs = [self.forward_shared(self.params, x[i : i + self.eval_chunk].to(device)).float().cpu()
                for i in range(0, len(x), self.eval_chunk)]
        self.base.train(was)
        return torch.cat(outs, dim=1)

    def member_state(self, k: int) -> dict:
        return {name: p[k].detach().cpu().clone() for name, p in self.params.items()}

    def load_member_state(self, k: int, state: dict) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p[k].copy_(state[name])
        self._models[k].load_state_dict(state)

    def member_optimizer_state(self, state: dict, k: int) -> dict:
        """Member k's slice of an optimiser state over stacked weights (tensors (N, ...))."""
        out = {}
        for pid, st in state["state"].items():
            out[pid] = {
                name: (v[k].clone() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == self.n
                       else (v.clone() if isinstance(v, torch.Tensor) else v))
                for name, v in st.items()
            }
        return {"state": out, "param_groups": copy.deepcopy(state["param_groups"])}

    def stacked_optimizer_state(self, states: Sequence[dict]) -> dict:
        """Inverse of :meth:`member_optimizer_state`: stack the members' slices again."""
        out = {}
        for pid, st in states[0]["state"].items():
            out[pid] = {
                name: (torch.stack([s["state"][pid][name] for s in states])
                       if isinstance(v, torch.Tensor) and v.dim() else v)
                for name, v in st.items()
            }
        return {"state": out, "param_groups": copy.deepcopy(states[0]["param_groups"])}

    def models(self) -> list[nn.Module]:
        """The original model objects holding the stacked weights as they are now."""
        for k, m in enumerate(self._models):
            m.load_state_dict(self.member_state(k))
        return self._models


def stacked_cross_entropy(logits: torch.Tensor, batch: Batch) -> LossParts:
    """Each member's batch-mean cross-entropy: logits (N, B, C), labels (N, B) -> loss (N,)."""
    if batch.y is None:
        raise ValueError("training on hard labels needs labelled data")
    losses = F.cross_entropy(
        logits.flatten(0, 1), batch.y.flatten().long(), reduction="none"
    ).view(batch.y.shape).mean(1)
    return LossParts(losses, torch.zeros_like(losses), losses)


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

    Member k draws its batches from ``batches[k]`` with the generator :func:`ensemble_kd.train.train`
    would seed from ``configs[k].seed``, so with the same initial weights the result matches N
    sequential runs up to float rounding (exactly the same batches).

    Args:
        models: N models that :func:`can_vectorize` accepts; their current weights are the start.
        batches: N labelled batch sources with the same number of batches (and sizes) per epoch.
        configs: N configs equal but for ``seed``.
        val: (x (M, ...), y (M,)) evaluated for every member each epoch; needed for early stopping.
        run_dirs: N run folders (resumed when all members stopped after the same epoch).
        device, progress, desc: as for :func:`ensemble_kd.train.train`.
        extra_states: N dicts of JSON-able facts that must match on resume (as in ``train``).
        on_epoch_end: called after each epoch with (epoch, the members' records; None for members
            that had stopped early before it).

    Returns:
        N :class:`~ensemble_kd.train.TrainResult` (the given model objects, trained, in eval mode).
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
    extra_states = list(extra_states) if extra_states is not None else [{} for _ in range(n)]
    if len(extra_states) != n or (run_dirs is not None and len(run_dirs) != n):
        raise ValueError("extra_states and run_dirs need one entry per model")
    cfgs = [c.validate() for c in configs]
    runs = None
    if run_dirs is not None:
        runs = [Run(d, run_identity(c.fingerprint(), e))
                for d, c, e in zip(run_dirs, cfgs, extra_states, strict=True)]
    device = resolve_device(device)
    return train_members(
        StackedModels(models, device), batches, cfgs, objective=stacked_cross_entropy, val=val,
        runs=runs, device=device, progress=progress, desc=desc, on_epoch_end=on_epoch_end,
    )
