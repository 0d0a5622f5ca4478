"""Reproduce Hinton, Vinyals & Dean (2015) on Fashion-MNIST: E1-E6, one report.

    python scripts/reproduce_paper.py --quick --out runs/paper_quick    # < 15 min on 2 CPU cores
    python scripts/reproduce_paper.py --out runs/paper_full             # hours; rerun to resume

The full run on 2 cores: two invocations side by side, one per core (estimates in
``scripts/paper/presets.py``, from CPU seconds per epoch measured by ``reproduce_pilots.py``):

    python scripts/reproduce_paper.py --out runs/paper_full --only E1,E2      # about 6.5 h
    python scripts/reproduce_paper.py --out runs/paper_full --only E3,E4,E5,E6  # about 2 h

Writes OUT/report/{report.md, report.html, results.json, *.png}; the experiments live in
``scripts/paper/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes `paper` importable

from paper.runner import main  # noqa: E402

if __name__ == "__main__":
    main()
