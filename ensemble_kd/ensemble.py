"""Ensembles: train N teachers that differ by seed (and optionally architecture), save, load, predict.

Each teacher is trained by the shared loop and saved to ``<out>/teacher_<k>/model.pt`` with its
checkpoints and ``metrics.jsonl`` beside it, so an interrupted ensemble resumes: finished teachers
are loaded, the interrupted one continues from its last epoch, the rest start fresh. The ensemble's
prediction is the mean of the teachers' probabilities.

Teachers that share one architecture without buffers (MLPs) can be trained all at once as one
vectorised model (:mod:`ensemble_kd.vectorized`): the same per-teacher seeds, batches, files and
formats, with the rounding of batched matrix products. By default that happens where it is faster:
on CUDA, and on the CPU for members of at most ``CPU_VECTORIZE_MAX_PARAMS`` parameters (see
``docs/performance.md``); ``vectorize=True`` forces it wherever it applies, ``vectorize=False``
forces the one-after-another path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .batching import BatchSource, TensorBatches, ViewBatches
from .checkpoint import load_model
from .data import Splits
from .factories import build_any, is_import_path, module_of
from .metrics import disagreement, evaluate
from .models import count_parameters
from .predict import ensemble_logits, resolve_device
from .run import Run
from .train import TrainConfig, TrainResult, train
from .vectorized import can_vectorize, train_vectorized
from .views import ViewConfig

# When the vectorised ensemble is the default (docs/performance.md). On the CPU, with 10 members, it
# measured 2.2x faster at 5k parameters per member, 1.0x at 51k and 0.75-0.9x from 85k up (batched
# products are less efficient than plain ones there). On CUDA a small MLP's step is launch bound, so
# N members in one launch cost about one: always.
CPU_VECTORIZE_MAX_PARAMS = 50_000


@dataclass
class ModelSpec:
    """A model architecture to build: a builder's name and its options.

    (A built model carries its own JSON ``spec`` attribute, the exact builder call that rebuilds it
    from a checkpoint; a ``ModelSpec`` is the user's choice before building.)
    """

    arch: str = "mlp"  # "mlp", "convnet", an import path pkg.module:function, or torchvision/...
    widths: tuple[int, ...] = (256, 256)  # mlp hidden sizes (convnet, cnn: channels); built-ins only
    dropout: float = 0.0  # dropout after each hidden layer; built-ins only
    kwargs: dict | None = None  # the builder's options (built-ins: added to widths and dropout)

    def build(self, input_shape, n_classes: int, *,
              allow_imports: Collection[str] | None = None) -> nn.Module:
        """Build the model.

        Args:
            input_shape, n_classes: of the data.
            allow_imports: modules an import-path ``arch`` may import; None (the Python API's
                default): the module of ``arch`` itself, which the caller chose.
        """
        extra = dict(self.kwargs or {})
        if is_import_path(self.arch) or "/" in self.arch:
            if allow_imports is None:
                allow_imports = self.own_modules()
            return build_any(self.arch, input_shape, n_classes, allow_imports=allow_imports, **extra)
        key = "channels" if self.arch in ("convnet", "cnn") else "widths"
        options = {key: list(self.widths), "dropout": self.dropout, **extra}
        return build_any(self.arch, input_shape, n_classes, **options)

    def own_modules(self) -> tuple[str, ...]:
        """The module an import-path ``arch`` names (empty for other names)."""
        return (module_of(self.arch),) if is_import_path(self.arch) else ()


TeacherSpec = ModelSpec  # the name of ensemble-kd 0.1.0, kept for the Python API


def teacher_dir(out_dir: str | os.PathLike, k: int) -> Path:
    return Path(out_dir) / f"teacher_{k}"


def data_meta(splits: Splits) -> dict:
    """What a saved model records about the data it was trained on."""
    return {
        "dataset": splits.name,
        "data_fingerprint": splits.fingerprint(),
        "class_names": list(splits.class_names),
        "n_classes": splits.n_classes,
        "input_shape": list(splits.input_shape),
    }


def train_ensemble(
    splits: Splits,
    specs: ModelSpec | Sequence[ModelSpec],
    n_teachers: int,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    jitter: int = 0,
    views: ViewConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    ranks: tuple[int, int] = (0, 1),
    vectorize: bool | None = None,
    allow_imports: Collection[str] | None = None,
) -> list[nn.Module]:
    """Train ``n_teachers`` teachers on ``splits`` that differ by seed (``config.seed + k``).

    Args:
        splits: the data (training part for fitting, validation part for monitoring).
        specs: one architecture for all, or one per teacher (cycled).
        n_teachers: ensemble size N >= 1.
        config: training hyperparameters; teacher k uses seed ``config.seed + k``.
        out_dir: folder receiving ``teacher_<k>/``.
        jitter: random input shifts (pixels) for the teachers' training batches.
        views: augmented views for the teachers' training batches instead (a fresh view of each
            example every epoch; mixup and cutmix mix the labels too), e.g.
            ``ViewConfig(shift=1, mixup=0.2)`` (the reproduction's E1 teacher, whose students
            beat those of the same teacher without mixup; ``docs/reproduction``). Not with ``jitter``;
            teachers on mixed views train one after another (never vectorised).
        device, progress: as for :func:`ensemble_kd.train.train`.
        ranks: (rank, world size): this process trains teachers k with k % world == rank.
        vectorize: train the teachers still to train that share one architecture together as one
            vectorised model (MLPs; convnets hold batch-norm buffers and stay sequential). None
            (default): where it is faster (CUDA; CPU for members of at most
            ``CPU_VECTORIZE_MAX_PARAMS`` parameters); True: wherever it applies; False: never.
        allow_imports: modules that import-path architectures (of ``specs`` and of teachers saved
            in ``out_dir`` by an earlier run) may import; None: the modules ``specs`` name.

    Returns:
        The teachers trained (or loaded) by this process, in order, in eval mode.
    """
    if n_teachers < 1:
        raise ValueError(f"n_teachers must be >= 1, got {n_teachers}")
    if views is not None and not views.validate(splits.input_shape).augments:
        views = None
    if views is not None:
        if jitter:
            raise ValueError("jitter and views both augment the teachers' inputs: use "
                             "views.shift instead of jitter")
        views = ViewConfig(**{**views.as_dict(), "views": None})  # a fresh view every epoch
        if views.mixes:  # the stacked (vectorised) loss does not mix labels
            if vectorize:
                raise ValueError("vectorised teachers cannot train on mixup/cutmix views; "
                                 "use vectorize=False or None")
            vectorize = False
    specs = [specs] if isinstance(specs, ModelSpec) else list(specs)
    if not specs:
        raise ValueError("no teacher architecture given")
    if allow_imports is None:
        allow_imports = [m for s in specs for m in s.own_modules()]
    rank, world = ranks
    meta_base = data_meta(splits)
    done: dict[int, nn.Module] = {}
    pending: dict[int, tuple[nn.Module, TrainConfig]] = {}
    for k in range(n_teachers):
        if k % world != rank:
            continue
        finished = Run(teacher_dir(out_dir, k)).load_finished(
            device, expect={"data_fingerprint": meta_base["data_fingerprint"]},
            allow_imports=allow_imports,
        )
        if finished is not None:
            done[k] = finished[0]
            continue
        cfg = TrainConfig(**{**vars(config), "seed": config.seed + k})
        torch.manual_seed(cfg.seed)  # the teacher's initial weights
        pending[k] = (specs[k % len(specs)].build(splits.input_shape, splits.n_classes,
                                                  allow_imports=allow_imports), cfg)

    def extra(model: nn.Module) -> dict:
        facts = {"data": meta_base["data_fingerprint"], "jitter": jitter, "spec": model.spec}
        if views is not None:  # absent without views: earlier teachers' checkpoints still resume
            facts["views"] = views.as_dict()
        return facts

    def batches(cfg: TrainConfig) -> BatchSource:
        if views is not None:
            return ViewBatches(splits.x_train, splits.y_train, views=views,
                               batch_size=cfg.batch_size)
        return TensorBatches(
            splits.x_train, splits.y_train, batch_size=cfg.batch_size, jitter=jitter
        )

    def save(k: int, result: TrainResult) -> None:
        meta = {**meta_base, "seed": pending[k][1].seed, "role": "teacher"}
        Run(teacher_dir(out_dir, k)).finish(result.model, meta)
        done[k] = result.model

    for group in _vectorizable_groups(pending, out_dir, vectorize, device):
        models = [pending[k][0] for k in group]
        results = train_vectorized(
            models, [batches(pending[k][1]) for k in group], [pending[k][1] for k in group],
            val=(splits.x_val, splits.y_val), run_dirs=[teacher_dir(out_dir, k) for k in group],
            device=device, progress=progress,
            desc=f"teachers {', '.join(str(k + 1) for k in group)}/{n_teachers}",
            extra_states=[extra(m) for m in models],
        )
        for k, result in zip(group, results, strict=True):
            save(k, result)
    for k, (model, cfg) in pending.items():
        if k in done:
            continue
        result = train(
            model, batches(cfg), cfg, val=(splits.x_val, splits.y_val),
            run_dir=teacher_dir(out_dir, k), device=device, progress=progress,
            desc=f"teacher {k + 1}/{n_teachers}", extra_state=extra(model), distributed=False,
        )
        save(k, result)
    teachers = [done[k] for k in sorted(done)]
    return teachers


def _vectorizable_groups(
    pending: dict[int, tuple[nn.Module, TrainConfig]],
    out_dir: str | os.PathLike,
    vectorize: bool | None,
    device: str | torch.device,
) -> list[list[int]]:
    """Teachers to train together: same architecture, no buffers, checkpoints at the same epoch."""
    if vectorize is False:
        return []
    on_cpu = resolve_device(device).type == "cpu"
    groups: dict[tuple[str, int], list[int]] = {}
    for k, (model, _) in pending.items():
        # teachers interrupted at different epochs cannot share one stacked run
        key = (json.dumps(getattr(model, "spec", None), sort_keys=True),
               Run(teacher_dir(out_dir, k)).checkpoint_epoch())
        groups.setdefault(key, []).append(k)
    out = []
    for g in groups.values():
        models = [pending[k][0] for k in g]
        if not can_vectorize(models):
            continue
        if vectorize is None and on_cpu and count_parameters(models[0]) > CPU_VECTORIZE_MAX_PARAMS:
            continue  # slower than one after another on a CPU
        out.append(g)
    return out


def find_teachers(folder: str | os.PathLike) -> list[Path]:
    """The ``model.pt`` files of the teachers under ``folder``, in teacher order."""
    folder = Path(folder)
    paths = sorted(
        folder.glob("teacher_*/model.pt"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    if not paths:
        raise FileNotFoundError(f"{folder}: no trained teachers (expected teacher_<k>/model.pt)")
    return paths


def load_teachers(
    paths: Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
    *,
    splits: Splits | None = None,
    allow_imports: Collection[str] = (),
) -> tuple[list[nn.Module], list[dict]]:
    """Load saved teachers and check that they belong together (and to ``splits`` if given).

    ``allow_imports``: modules the teachers' specs may import (see :func:`load_model`).
    """
    models, metas = [], []
    for p in paths:
        m, meta = load_model(p, device, allow_imports=allow_imports)
        models.append(m)
        metas.append(meta)
    classes = {m.get("n_classes") for m in metas}
    if len(classes) > 1:
        raise ValueError(f"the teachers have different numbers of classes: {sorted(classes)}")
    if splits is not None:
        for p, meta in zip(paths, metas, strict=True):
            if meta.get("n_classes") != splits.n_classes:
                raise ValueError(
                    f"{p}: teacher has {meta.get('n_classes')} classes but data set "
                    f"{splits.name!r} has {splits.n_classes}"
                )
            if meta.get("data_fingerprint") not in (None, splits.fingerprint()):
                raise ValueError(
                    f"{p}: teacher was trained on other data ({meta.get('dataset')!r}, "
                    f"fingerprint differs) than the data set given ({splits.name!r})"
                )
    return models, metas


def ensemble_report(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, **kw) -> dict:
    """Metrics of each member, of the ensemble (mean probabilities), and the members' disagreement."""
    logits = ensemble_logits(models, x, **kw)  # (K, N, C)
    probs = torch.softmax(logits, -1)
    return {
        "members": [evaluate(p, y) for p in probs],
        "ensemble": evaluate(probs.mean(0), y),
        "disagreement": disagreement(probs),
        "probs": probs.mean(0),
    }
