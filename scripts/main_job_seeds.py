"""Run ``ensemble-kd run`` for several seeds and tabulate baseline against distilled student.

    python scripts/main_job_seeds.py --out runs/seeds --seeds 2 3 4 5 6 [-- extra ensemble-kd flags]
    python scripts/main_job_seeds.py --out runs/s --teachers runs/fm_issue -- --dataset fashion-mnist ...

With ``--teachers DIR`` every seed runs ``ensemble-kd distill --teachers DIR`` (the same teachers,
a new student seed: baseline and candidates) instead of a whole ``run``.

Each seed is its own run folder (``OUT/seed_S``), resumed when it already exists, so the script can
be stopped and rerun. It prints a Markdown table of test accuracy per seed (baseline, distilled,
difference, kept T and alpha, agreement with the ensemble) and the mean difference, and writes it
to ``OUT/seeds.md`` with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from ensemble_kd.io import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--teachers", type=Path, default=None,
                   help="distil these saved teachers (ensemble-kd distill) instead of running all")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed on to ensemble-kd run")
    args = p.parse_args()
    extra = [a for a in args.extra if a != "--"]
    rows = []
    for s in args.seeds:
        folder = args.out / f"seed_{s}"
        if not (folder / "summary.json").exists():
            step = ["run"] if args.teachers is None else ["distill", "--teachers", str(args.teachers)]
            cmd = [sys.executable, "-m", "ensemble_kd", *step, "--out", str(folder), "--seed", str(s),
                   "--quiet", *extra, *(["--resume"] if (folder / "config.json").exists() else [])]
            print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        rows.append((s, json.loads((folder / "summary.json").read_text())))
    diffs = [100 * (r["distilled_accuracy"] - r["baseline_accuracy"]) for _, r in rows]
    lines = ["| seed | ensemble | baseline | distilled | difference | T | alpha | agreement |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (s, r), d in zip(rows, diffs, strict=True):
        lines.append(f"| {s} | {100 * r['ensemble_accuracy']:.2f}% | {100 * r['baseline_accuracy']:.2f}% "
                     f"| {100 * r['distilled_accuracy']:.2f}% | {d:+.2f} | {r['distilled_temperature']:g} "
                     f"| {r['distilled_alpha']:g} | {r.get('agreement', float('nan')):.4f} |")
    mean = lambda k: 100 * statistics.mean(r[k] for _, r in rows)  # noqa: E731
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    lines.append(f"| mean | {mean('ensemble_accuracy'):.2f}% | {mean('baseline_accuracy'):.2f}% | "
                 f"{mean('distilled_accuracy'):.2f}% | {statistics.mean(diffs):+.2f} (sd {sd:.2f}) | | | |")
    command = " ".join(["python scripts/main_job_seeds.py", "--out", str(args.out), "--seeds",
                        *map(str, args.seeds),
                        *(["--teachers", str(args.teachers)] if args.teachers else []),
                        *(["--", *extra] if extra else [])])
    text = f"`{command}`\n\n" + "\n".join(lines) + "\n"
    atomic_write_text(args.out / "seeds.md", text)
    print(text)


if __name__ == "__main__":
    main()
