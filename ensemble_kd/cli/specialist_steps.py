"""The specialist steps of a run: confusion report, class subsets, specialists, their evaluation.

The only module of the command line that drives :mod:`specialists`. Its imports sit inside the
functions because importing ``specialists`` (scikit-learn, matplotlib) takes seconds that the
commands without specialists should not pay.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import distributed as dist
from ..data import Splits
from ..ensemble import find_teachers
from ..factories import allowing_imports
from ..models import count_parameters
from ..predict import predict_logits
from .config import RunConfig
from .context import Ctx
from .summary import row


def generalist_path(cfg: RunConfig, run: Path) -> Path:
    """The model.pt of the generalist in run folder ``run``: the student or teacher 0."""
    if cfg.specialists_from == "teacher":
        return find_teachers(run / "teachers")[0]
    if cfg.specialists_from == "student":
        return run / "student" / "model.pt"
    raise ValueError(f"generalist must be 'student' or 'teacher', got {cfg.specialists_from!r}")


def step_report(ctx: Ctx, splits: Splits, model, folder: Path) -> list[list[int]]:
    """Confusion report of ``model`` on the validation split, with the class subsets chosen for
    specialists (:func:`choose_subsets`); returns the subsets (possibly none)."""
    from specialists import analyse, write_confusion_report

    probs = torch.softmax(predict_logits(model, splits.x_val, device=ctx.device), -1)
    analysis = analyse(probs, splits.y_val, class_names=splits.class_names,
                       n_clusters=ctx.cfg.n_clusters, method=ctx.cfg.cluster_method)
    subsets = choose_subsets(ctx, splits, model, analysis.counts)
    if dist.is_main():
        html = write_confusion_report(analysis, folder, title="Confusion report (validation split)",
                                      subsets=subsets)
        ctx.say(f"confusion report: {html}")
    return subsets


def choose_subsets(ctx: Ctx, splits: Splits, generalist, counts) -> list[list[int]]:
    """The class subsets worth a specialist (rank 0's on every rank), possibly none: from the
    validation confusion, else the generalist's expected confusion on the training set
    (:func:`specialists.subsets_for_generalist`); the reason is said."""
    from specialists import subsets_for_generalist

    cfg = ctx.cfg
    def train_probs():  # the generalist over the training set, only when validation is too weak
        return torch.softmax(predict_logits(generalist, splits.x_train, device=ctx.device), -1).numpy()

    subsets, why = subsets_for_generalist(
        counts, train_probs=train_probs, train_labels=splits.y_train.numpy(),
        class_names=list(splits.class_names), n_clusters=cfg.n_clusters, method=cfg.cluster_method,
        overlap=cfg.overlap, max_specialists=cfg.max_specialists, max_subset_size=cfg.max_subset_size,
    )
    ctx.say(why)
    return dist.broadcast_object(subsets)  # every rank trains against rank 0's subsets


def specialist_config(cfg: RunConfig):
    """The :class:`specialists.specialist.SpecialistConfig` of the run's options."""
    from specialists.specialist import SpecialistConfig

    return SpecialistConfig(share=cfg.specialist_share, alpha=cfg.specialist_alpha,
                            temperature=cfg.specialist_temperature,
                            calibration=cfg.specialist_calibration or "auto")


def step_specialists(ctx: Ctx, splits: Splits, generalist, subsets, folder: Path):
    """Train (or load) one specialist per subset in ``folder``."""
    from specialists.specialist import load_specialists, train_specialists

    names = [[splits.class_names[c] for c in s] for s in subsets]
    ctx.say(f"training {len(subsets)} specialist(s): " + "; ".join(", ".join(n) for n in names))
    with allowing_imports(ctx.allow_imports):  # specialists load (resumed) models themselves
        specs = train_specialists(
            generalist, subsets, splits, ctx.cfg.train_config(ctx.cfg.specialist_epochs),
            specialist_config(ctx.cfg), folder, device=ctx.device, progress=ctx.progress,
            ranks=(dist.rank(), dist.world()),
        )
        if dist.active():  # each rank trained its share; all of them read every specialist
            dist.barrier()
            specs = load_specialists(folder, ctx.device)
    return specs


def load_run_specialists(ctx: Ctx, folder: Path):
    """The specialists saved in ``folder`` (a run's ``specialists/``)."""
    from specialists.specialist import load_specialists

    with allowing_imports(ctx.allow_imports):
        return load_specialists(folder, ctx.device)


def specialist_rows(ctx: Ctx, splits: Splits, generalist, specs) -> tuple[list[dict], dict]:
    """Test-set rows of the generalist alone and combined with ``specs``, and the coverage table."""
    from specialists.combine import combine_predictions
    from specialists.evaluate import evaluate_specialists, format_coverage_table
    from specialists.specialist import specialist_probs

    x, y = splits.x_test, splits.y_test
    pg = torch.softmax(predict_logits(generalist, x, device=ctx.device), -1)
    ps = specialist_probs(specs, x, device=ctx.device)
    subsets = [s.subset for s in specs]
    q = combine_predictions(pg, ps, subsets, top_n=ctx.cfg.top_n)  # solved once, used twice

    def combined(*_args, **_kwargs) -> torch.Tensor:
        return q

    res = evaluate_specialists(pg, ps, subsets, y, top_n=ctx.cfg.top_n, combine=combined)
    rows = [
        row(f"generalist ({ctx.cfg.specialists_from})", pg, y, count_parameters(generalist)),
        row(f"generalist + {len(specs)} specialists", q, y,
            count_parameters(generalist) + sum(count_parameters(s.model) for s in specs)),
    ]
    return rows, {"specialists": res, "coverage_table": format_coverage_table(res)}
