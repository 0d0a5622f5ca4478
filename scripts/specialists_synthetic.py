"""Specialists on synthetic data with planted confusable groups: do the clusters recover the groups,
and do generalist + specialists beat the generalist alone?

    python scripts/specialists_synthetic.py --out runs/specialists_synthetic [--seeds 0 1 2]

For each seed: train a deliberately small generalist (a capacity-limited model is where specialists
have room to help), cluster its validation confusion, score the clusters against the planted groups
(adjusted Rand index), train one dustbin specialist per cluster, and evaluate the combination on the
test set. Prints one line per seed and a mean; writes ``results.json``. Resumable per seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.metrics import adjusted_rand_score

import specialists as sp
from ensemble_kd import TrainConfig, load_dataset, predict_probs, train
from ensemble_kd.batching import TensorBatches
from ensemble_kd.checkpoint import load_model, save_model
from ensemble_kd.ensemble import ModelSpec
from ensemble_kd.io import atomic_write_json


def labels_of(partition: list[list[int]], n: int) -> list[int]:
    out = [0] * n
    for g, members in enumerate(partition):
        for c in members:
            out[c] = g
    return out


def one_seed(seed: int, out: Path, args) -> dict:
    done = out / f"seed_{seed}.json"
    if done.exists():
        return json.loads(done.read_text())
    s = load_dataset("synthetic", synthetic_seed=seed, seed=seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, seed=seed)
    gpath = out / f"seed_{seed}" / "generalist" / "model.pt"
    if gpath.exists():
        g = load_model(gpath)[0]
    else:
        torch.manual_seed(seed)
        g = ModelSpec("mlp", tuple(args.widths), 0.0).build(s.input_shape, s.n_classes)
        g = train(g, TensorBatches(s.x_train, s.y_train, batch_size=64), cfg,
                  run_dir=gpath.parent, progress=False).model
        save_model(gpath, g, {"n_classes": s.n_classes, "data_fingerprint": s.fingerprint()})
    analysis = sp.analyse(predict_probs(g, s.x_val), s.y_val, class_names=s.class_names,
                          n_clusters=len(s.groups))
    ari = adjusted_rand_score(labels_of(s.groups, s.n_classes), labels_of(analysis.clusters, s.n_classes))
    subsets = sp.choose_subsets(analysis.counts)
    specs = sp.train_specialists(
        g, subsets, s, TrainConfig(epochs=args.specialist_epochs, batch_size=64, lr=3e-3, seed=seed),
        sp.SpecialistConfig(alpha=args.alpha), out / f"seed_{seed}" / "specialists", progress=False,
    )
    res = sp.evaluate_specialists(predict_probs(g, s.x_test), sp.specialist_probs(specs, s.x_test),
                                  subsets, s.y_test, top_n=1)
    row = {"seed": seed, "ari": ari, "n_specialists": len(subsets),
           **{k: v for k, v in res.items() if isinstance(v, (int, float))}}
    atomic_write_json(done, row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/specialists_synthetic")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--widths", type=int, nargs="+", default=[16], help="generalist hidden sizes")
    p.add_argument("--epochs", type=int, default=20, help="generalist epochs")
    p.add_argument("--specialist-epochs", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the generalist's soft targets")
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        r = one_seed(seed, out, args)
        rows.append(r)
        print(f"seed {seed}: ARI {r['ari']:.3f}, generalist {r['generalist_acc']:.4f} -> "
              f"with {r['n_specialists']} specialists {r['combined_acc']:.4f} "
              f"(relative gain {r['relative_gain']:+.2%}, error reduction "
              f"{r['relative_error_reduction']:+.2%})", flush=True)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in
            ("ari", "generalist_acc", "combined_acc", "relative_gain", "relative_error_reduction")}
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    atomic_write_json(out / "results.json", {"args": vars(args), "rows": rows, "mean": mean,
                                             "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
