"""Train the built-in image model (``cnn``) on Fashion-MNIST per seed and report test accuracy.

    PYTHONPATH=. python scripts/image_model.py --seeds 0 1 2 --results docs/image-model.json

Uses the library's own loop (:func:`ensemble_kd.train.train` over
:class:`~ensemble_kd.batching.TensorBatches` with random shifts). Resumable at two levels: every
finished seed is appended to the ``--results`` JSON file and skipped when the command is run again,
and an interrupted seed continues from its run folder's last epoch checkpoint (``--runs``, default
``runs/image-model/``, git-ignored). Each result keeps the per-epoch wall and CPU seconds and the
load average, so a reader can tell a busy machine from a slow model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ensemble_kd.batching import TensorBatches  # noqa: E402
from ensemble_kd.data import load_dataset  # noqa: E402
from ensemble_kd.io import atomic_write_json  # noqa: E402
from ensemble_kd.machine import describe_machine  # noqa: E402
from ensemble_kd.models import build_model, count_parameters  # noqa: E402
from ensemble_kd.predict import predict_logits  # noqa: E402
from ensemble_kd.train import (  # noqa: E402
    TrainConfig,
    evaluate_logits,
    flush_denormals,
    seed_everything,
    train,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--grid", type=int, default=7)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--jitter", type=int, default=2, help="random shifts in pixels")
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on the first N training examples only (0: all; for timing)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--runs", default="runs/image-model", help="folder of the per-seed run folders")
    p.add_argument("--results", default="runs/image-model/results.json",
                   help="JSON file the finished seeds are appended to")
    return p.parse_args(argv)


def setting(args) -> dict:
    """What a result depends on (a finished seed is reused only under the same setting)."""
    keys = ("dataset", "model", "channels", "hidden", "grid", "dropout", "epochs", "batch_size",
            "optimizer", "lr", "weight_decay", "schedule", "jitter", "train_subset")
    return {k: getattr(args, k) for k in keys}


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())["results"]


def save_results(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"results": results, "summary": summarise(results)})


def summarise(results: list[dict]) -> list[dict]:
    """Mean and spread of test accuracy and epoch seconds for each setting."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(json.dumps(r["setting"], sort_keys=True), []).append(r)
    out = []
    for key, rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        secs = [s for r in rs for s in r["epoch_seconds"]]
        out.append({
            "setting": json.loads(key), "seeds": [r["seed"] for r in rs],
            "test_acc": accs, "mean_test_acc": statistics.fmean(accs),
            "std_test_acc": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "median_epoch_seconds": statistics.median(secs),
        })
    return out


def run_seed(args, seed: int, splits, run_dir: Path) -> dict:
    seed_everything(seed)
    model = build_model(args.model, tuple(splits.x_train.shape[1:]), splits.n_classes,
                        channels=args.channels, hidden=args.hidden, grid=args.grid,
                        dropout=args.dropout)
    x, y = splits.x_train, splits.y_train
    if args.train_subset:
        x, y = x[: args.train_subset], y[: args.train_subset]
    batches = TensorBatches(x, y, batch_size=args.batch_size, jitter=args.jitter)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                      seed=seed)
    cpu: list[float] = []
    load: list[float] = []
    last = [time.process_time()]

    def on_epoch_end(record: dict) -> None:
        now = time.process_time()
        cpu.append(now - last[0])  # includes the validation pass (the loop's "seconds" does not)
        last[0] = now
        load.append(os.getloadavg()[0])
        print(f"  seed {seed} epoch {record['epoch']}/{args.epochs}: loss {record['loss']:.4f} "
              f"val_acc {record['val_acc']:.4f} {record['seconds']:.1f} s wall, {cpu[-1]:.1f} s CPU, "
              f"load {load[-1]:.1f}", flush=True)

    result = train(model, batches, cfg, val=(splits.x_val, splits.y_val), run_dir=run_dir,
                   device="cpu", progress=False, desc=f"seed {seed}", on_epoch_end=on_epoch_end,
                   extra_state={"setting": setting(args)})
    test = evaluate_logits(predict_logits(result.model, splits.x_test), splits.y_test)
    return {
        "seed": seed, "setting": setting(args), "test_acc": test["acc"], "test_nll": test["nll"],
        "val_acc": [h.get("val_acc") for h in result.history],
        "epoch_seconds": [h["seconds"] for h in result.history],
        # this process's epochs only (a resumed seed lacks the CPU times of the earlier ones)
        "epoch_cpu_seconds": cpu, "load_average": load,
        "parameters": count_parameters(result.model), "train_examples": len(x),
        "threads": torch.get_num_threads(), "machine": describe_machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    with flush_denormals():  # the worker threads started inside inherit the mode
        return _main(argv)


def _main(argv) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results_path = Path(args.results)
    results = load_results(results_path)
    splits = load_dataset(args.dataset)
    print(f"{describe_machine()}", flush=True)
    for seed in args.seeds:
        if any(r["seed"] == seed and r["setting"] == setting(args) for r in results):
            print(f"seed {seed}: done before, skipped", flush=True)
            continue
        tag = "-".join(f"{v}" if not isinstance(v, list) else "x".join(map(str, v))
                       for v in setting(args).values())
        run_dir = Path(args.runs) / tag / f"seed{seed}"
        r = run_seed(args, seed, splits, run_dir)
        print(f"seed {seed}: test accuracy {r['test_acc']:.4f}, median epoch "
              f"{statistics.median(r['epoch_seconds']):.1f} s", flush=True)
        results = load_results(results_path) + [r]  # re-read: another process may have appended
        save_results(results_path, results)
    for s in summarise([r for r in results if r["setting"] == setting(args)]):
        print(f"mean test accuracy {s['mean_test_acc']:.4f} +- {s['std_test_acc']:.4f} over seeds "
              f"{s['seeds']}: {[round(a, 4) for a in s['test_acc']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
