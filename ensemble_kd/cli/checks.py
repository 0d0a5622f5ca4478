"""Every option a command will use, checked against the data before the output folder is touched."""

from __future__ import annotations

import torch

from ..data import Splits
from .config import RunConfig
from .context import transfer_of
from .specialist_steps import specialist_config
from .steps import VECTORIZE


def check_options(cfg: RunConfig, splits: Splits, command: str, n_teachers: int | None = None,
                  allow_imports: frozenset[str] = frozenset()) -> None:
    """Check every option ``command`` will use against the data, before the output folder is touched.

    A bad value found here costs a second; found by the step that uses it, after the teachers have
    trained for hours, it would cost the run (and leave a half-made output folder behind).

    Architectures named by import path are built once here, so a module that is not allowed, a
    factory that fails or a model of the wrong output size stops the command before any work.

    Raises:
        ValueError: naming the option and the problem.
    """
    c, shape = splits.n_classes, splits.input_shape

    def jitter_ok(name: str, value: int) -> None:
        if value < 0:
            raise ValueError(f"{name} must be >= 0 pixels, got {value}")
        if value and len(shape) != 3:
            raise ValueError(f"{name} shifts images, but {splits.name!r} inputs have shape {shape}")

    with torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the seed alone
        if command in ("train-ensemble", "run"):
            if cfg.teachers < 1:
                raise ValueError(f"teachers must be >= 1, got {cfg.teachers}")
            if cfg.teacher_vectorize not in VECTORIZE:
                raise ValueError(f"teacher_vectorize must be auto, on or off, got {cfg.teacher_vectorize!r}")
            cfg.teacher_train_config()
            teachers = [spec.build(shape, c, allow_imports=allow_imports) for spec in cfg.teacher_specs()]
            jitter_ok("teacher_jitter", cfg.teacher_jitter)
            if cfg.teacher_mixup is not None and not cfg.teacher_mixup >= 0:  # NaN too
                raise ValueError(f"teacher_mixup must be >= 0 (0 = off), got {cfg.teacher_mixup}")
            if (views := cfg.teacher_views()) is not None:
                views.validate(shape)
                if cfg.teacher_vectorize == "on":
                    raise ValueError("teacher_vectorize on: vectorised teachers cannot train on "
                                     "mixup; use --teacher-vectorize auto or off")
        if command in ("distill", "run"):
            cfg.train_config()
            student = cfg.student_spec().build(shape, c, allow_imports=allow_imports)
            if cfg.cache_topk >= c:
                raise ValueError(f"cache_topk must lie in [0, {c - 1}] for {c} classes, "
                                 f"got {cfg.cache_topk}")
            for dcfg in cfg.distill_configs():  # every candidate of a sweep
                dcfg.validate(cfg.teachers if command == "run" else n_teachers)
            if (views := cfg.view_config()) is not None:
                views.validate(shape)
            jitter_ok("student_jitter", cfg.student_jitter)
            transfer_of(cfg, splits)
    if command == "train-specialists" or (command == "run" and cfg.specialists):
        _check_specialist_options(cfg, splits)
    if command == "run" and cfg.specialists:
        generalist = student if cfg.specialists_from == "student" else teachers[0]
        if not isinstance(getattr(generalist, "head", None), torch.nn.Linear):
            raise ValueError(
                f"specialists replace the generalist's final nn.Linear called 'head', and "
                f"{generalist.spec['name']!r} has none: give it one or pass --no-specialists")


def _check_specialist_options(cfg: RunConfig, splits: Splits) -> None:
    """The options of the specialist steps (confusion clustering, subsets, training)."""
    from specialists.clustering import METHODS
    from specialists.training import CALIBRATIONS

    c = splits.n_classes
    cfg.train_config(cfg.specialist_epochs)
    if cfg.specialist_calibration not in (None, *CALIBRATIONS):
        raise ValueError(f"specialist_calibration must be one of {', '.join(CALIBRATIONS)}, "
                         f"got {cfg.specialist_calibration!r}")
    specialist_config(cfg).validate()
    if c < 3:
        raise ValueError(f"specialists need at least 3 classes, {splits.name!r} has {c}")
    if cfg.n_clusters is not None and not 1 <= cfg.n_clusters <= c:
        raise ValueError(f"n_clusters must lie in [1, {c}] for {c} classes, got {cfg.n_clusters}")
    if cfg.cluster_method not in METHODS:
        raise ValueError(f"cluster_method must be one of {', '.join(METHODS)}, "
                         f"got {cfg.cluster_method!r}")
    if cfg.specialists_from not in ("student", "teacher"):
        raise ValueError(f"specialists_from must be 'student' or 'teacher', "
                         f"got {cfg.specialists_from!r}")
    for name, low in (("max_specialists", 1), ("max_subset_size", 2), ("overlap", 0),
                      ("top_n", 1)):
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
