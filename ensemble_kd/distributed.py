"""Running under ``torchrun``: process-group set-up and the few rules that keep ranks apart.

* ``train-ensemble`` / ``train-specialists`` share out whole models: rank r trains models
  k with ``k % world == r``.
* ``distill`` (and the baseline student) wrap the student in ``DistributedDataParallel``: every rank
  draws the same permutation, takes its own shard of each batch, and DDP averages the gradients, so
  each step sees the whole batch.
* Rank 0 alone writes the run directory's shared files (config, cache, checkpoints, summaries);
  the others wait at a barrier and then read what rank 0 wrote.

Outside torchrun everything here is a no-op (world size 1, rank 0).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; return this rank's device.

    gloo on CPU, nccl on CUDA (each rank on GPU ``LOCAL_RANK``).
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(minutes=30),
    )
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (a batch), as a slice."""
    r, w = rank(), world()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def assert_same_weights(model: torch.nn.Module) -> None:
    """Check that every rank holds bit-identical parameters (DDP keeps them in step)."""
    if not active():
        return
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    mine = torch.stack([flat.sum(), (flat * weights).sum(), (flat * flat).sum()])
    every = [torch.empty_like(mine) for _ in range(world())]
    dist.all_gather(every, mine)
    if any(not torch.equal(every[0], other) for other in every[1:]):
        raise RuntimeError("the ranks ended training with different weights")


def broadcast_object(obj):
    """Rank 0's ``obj`` (a small picklable value we made ourselves) on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish(wait: bool = True) -> None:
    """Leave the process group (after the others when ``wait``; at once after an error)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
