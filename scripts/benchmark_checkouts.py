"""Time one plain and one cached-distillation epoch in two checkouts, interleaved in one sitting.

    python scripts/benchmark_checkouts.py OLD_DIR NEW_DIR [--repeats 7] [--examples 54000] [--views]

Each repeat runs one short process per checkout in turn (old, new, old, new, ...), each timing
(after a warm-up) one epoch of the benchmark's student (MLP 784-64-10, batch 128, Adam, one thread)
on hard labels and one from the cached soft targets of 10 MLP teachers 784-256-256-10, as
``scripts/benchmark.py`` does. It prints the medians and the ratios side by side, so a change's
effect on the training loop is measured against the code before it on the same, equally loaded
machine. OLD_DIR and NEW_DIR are source trees (e.g. a ``git worktree`` of the old commit).
With ``--views`` the distillation epoch is ``scripts/benchmark.py``'s views case instead: a cache
of 4 views per example (1-px shifts, mixup 0.2), regenerated at every step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from ensemble_kd.batching import TensorBatches, ViewBatches
from ensemble_kd.cache import ensure_cache
from ensemble_kd.distill import DistillConfig, cached_objective
from ensemble_kd.models import build_model
from ensemble_kd.train import TrainConfig, train
from ensemble_kd.views import ViewConfig
n, with_views = int(sys.argv[2]), sys.argv[3] == "views"
g = torch.Generator().manual_seed(0)
x = torch.rand(n, 1, 28, 28, generator=g)
y = torch.randint(0, 10, (n,), generator=g)
def mlp(seed, widths, dropout=0.0):
    torch.manual_seed(seed)
    return build_model("mlp", (1, 28, 28), 10, widths=list(widths), dropout=dropout)
teachers = [mlp(100 + k, (256, 256), 0.2) for k in range(10)]
folder = tempfile.mkdtemp()
views = ViewConfig(shift=1, mixup=0.2, views=4, seed=0) if with_views else None
dcfg = DistillConfig(views=views)
objective = cached_objective(ensure_cache(teachers, x, folder, views=views), dcfg)
batches = TensorBatches(x, y, batch_size=128)
distill_batches = ViewBatches(x, y, views=views, batch_size=128) if with_views else batches
cfg = TrainConfig(epochs=1, batch_size=128)
def epoch(data, **kw):
    student = mlp(0, (64,))
    t = time.perf_counter()
    train(student, data, cfg, progress=False, **kw)
    return time.perf_counter() - t
epoch(batches); epoch(distill_batches, objective=objective)  # warm-up
print(json.dumps({"plain": epoch(batches),
                  "cached": epoch(distill_batches, objective=objective)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--examples", type=int, default=54_000)
    p.add_argument("--views", action="store_true",
                   help="the distillation epoch on cached views (shifts and mixup regenerated)")
    args = p.parse_args()
    times: dict[str, dict[str, list[float]]] = {
        k: {"plain": [], "cached": []} for k in ("old", "new")}
    for r in range(args.repeats):
        for name in ("old", "new"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(getattr(args, name).resolve()), str(args.examples),
                 "views" if args.views else "plain"],
                capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""},
            ).stdout
            t = json.loads(out.strip().splitlines()[-1])
            for k in ("plain", "cached"):
                times[name][k].append(t[k])
        print(f"repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}
    result = {
        "old": str(args.old), "new": str(args.new), "repeats": args.repeats,
        "examples": args.examples, "views": args.views, "median_seconds": med,
        "plain_new_over_old": med["new"]["plain"] / med["old"]["plain"],
        "cached_over_plain_old": med["old"]["cached"] / med["old"]["plain"],
        "cached_over_plain_new": med["new"]["cached"] / med["new"]["plain"],
        "seconds": times,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
