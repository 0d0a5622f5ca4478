"""Specialists distilled back into one model, against a control of the same budget.

Hinton, Vinyals & Dean (2015, sec. 5) leave open how to put what the specialists know back into
one model. Here the exact combined distribution q of the generalist and its active specialists
(:mod:`specialists.combined`) is computed once over the transfer set and cached like teacher
outputs; a copy of the generalist (same architecture, *starting from its weights*) is then
distilled on it by :func:`ensemble_kd.distill.distill`:

    loss = alpha * T^2 * KL(softmax(log q / T) || softmax(z / T)) + (1 - alpha) * CE(y, softmax(z))

(the hard term where the transfer set has labels). The merged model runs at the generalist's
inference cost.

With ``MergeConfig.views`` (augmented views of the transfer set, :class:`ensemble_kd.ViewConfig`)
q is computed on V cached views of every example, and the merged model and its control both train
on those very views (the control's labels mixed alike where views mix examples): on the training
images the generalist and its specialists may have learnt the labels by heart, so that q there
says little beyond them, while on views they have not seen it carries what they know.

The control: another copy of the generalist, trained for the same budget (epochs, steps, learning
rate, batches: same seed, same transfer set) on the generalist's *own* objective without
specialists, so that extra training alone is not counted as the specialists' gain:

* ``"teachers"``: distillation from the teachers the generalist was a student of (at its own
  temperature and alpha): the run's distilled student continues its training;
* ``"self"``: distillation from the generalist's own frozen outputs at the merge's T and alpha,
  plus labels: exactly the merge's objective with q replaced by the generalist's distribution;
* ``"labels"``: hard labels alone (a generalist trained on labels, e.g. a teacher).

Folder layout (every file atomic; every step resumes, a finished one is loaded)::

    out_dir/q_cache/   meta.json + logits.npy: log q over the transfer set (N, 1, C), or its views
    out_dir/model/     the merged model: model.pt, checkpoint.pt, metrics.jsonl
    out_dir/control/   the control: model.pt, checkpoint.pt, metrics.jsonl (+ cache/)

The test-set comparison is :mod:`specialists.merge_report`'s job.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ensemble_kd.cache import open_cache, teachers_fingerprint, write_cache
from ensemble_kd.data import TransferSet
from ensemble_kd.distill import DistillConfig, distill, train_baseline
from ensemble_kd.io import FormatError
from ensemble_kd.run import Run
from ensemble_kd.train import TrainConfig
from ensemble_kd.views import ViewConfig

from .combined import CombinedModel, q_fingerprint
from .subsets import validate_subsets
from .training import Specialist

__all__ = ["CONTROLS", "MergeConfig", "MergeResult", "check_merge_inputs", "distill_specialists",
           "merge_folders"]

log = logging.getLogger(__name__)
CONTROLS = ("teachers", "self", "labels")


@dataclass
class MergeConfig:
    """How q is distilled into the merged model, and what the control trains on."""

    temperature: float = 2.0  # T of the soft term on q (log q as logits); predicts at T = 1 after
    # weight of the soft term; 1 - alpha weighs the labels, where there are any. On the images a
    # generalist was trained on, q is less accurate than the labels; 0.5 kept the most of the
    # specialists' gain in E6's pilots (0.9 until 2026-12-07; scripts/paper/presets.py)
    alpha: float = 0.5
    top_n: int | None = 1  # specialists whose subset holds one of the generalist's top n are active
    control: str = "self"  # the control's objective: "teachers", "self" or "labels" (module doc)
    cache_dtype: str = "float32"  # storage of log q in the q-cache: "float32" or "float16"
    # augmented views of the transfer set on which q is computed (V cached views per example) and
    # the merged model and its control train; None = the transfer set as it is (module doc)
    views: ViewConfig | None = None

    def validate(self) -> MergeConfig:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"merge temperature must be finite and > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"merge alpha must lie in [0, 1], got {self.alpha}")
        if self.top_n is not None and (isinstance(self.top_n, bool) or self.top_n < 1):
            raise ValueError(f"top_n must be >= 1 or None, got {self.top_n!r}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got {self.control!r}")
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be float32 or float16, got {self.cache_dtype!r}")
        if self.views is not None:
            if not isinstance(self.views, ViewConfig):
                raise ValueError(f"merge views must be a ViewConfig or None, got "
                                 f"{type(self.views).__name__}")
            self.views.validate()
            if self.views.views is None:
                raise ValueError("the merge caches q on its views: give the number of views V "
                                 "(views=None, a fresh view every epoch, cannot be cached)")
        return self

    def views_for(self, input_shape: tuple[int, ...]) -> ViewConfig | None:
        """The views checked against the inputs' shape; None for none or plain views."""
        if self.views is None:
            return None
        return None if self.views.validate(tuple(input_shape)).plain else self.views


class MergeResult(NamedTuple):
    merged: nn.Module  # the generalist's architecture distilled on q, eval mode
    control: nn.Module  # the generalist trained on for the same budget without specialists
    combined: CombinedModel  # generalist + specialists (log q), e.g. for the test-set comparison
    q_fingerprint: str  # the q-cache's fingerprint


def merge_folders(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The folders :func:`distill_specialists` writes under ``out_dir``."""
    out = Path(out_dir)
    return {"q_cache": out / "q_cache", "model": out / "model", "control": out / "control"}


def check_merge_inputs(generalist: nn.Module, specialists: Sequence[Specialist],
                       transfer: TransferSet, cfg: MergeConfig,
                       control_teachers: Sequence[nn.Module] = ()) -> CombinedModel:
    """The checks of :func:`distill_specialists` that need no training (run before anything is
    written): specialists present, valid subsets that fit the heads, a non-empty transfer set, what
    the control needs. Returns the combination as a :class:`CombinedModel`.

    Raises:
        ValueError: one line naming the problem.
    """
    if len(transfer) == 0 or len(transfer.x) == 0:
        raise ValueError("the transfer set is empty: there is nothing to distil the specialists on")
    if not specialists:
        raise ValueError("no specialists to distil: the run has a generalist only (train "
                         "specialists first, e.g. ensemble-kd train-specialists)")
    if cfg.control == "teachers" and not control_teachers:
        raise ValueError("control 'teachers' needs the teachers the generalist was distilled from")
    if cfg.control == "labels" and transfer.y is None:
        raise ValueError("control 'labels' needs a labelled transfer set; use control 'self'")
    cfg.views_for(tuple(transfer.x.shape[1:]))  # views that do not fit the inputs: one line
    with torch.no_grad():
        generalist.eval()
        dev = next(generalist.parameters()).device
        n_classes = int(generalist(transfer.x[:1].to(dev)).shape[-1])
    subsets = validate_subsets([sp.subset for sp in specialists], n_classes)
    combined = CombinedModel(generalist, [sp.model for sp in specialists], subsets, cfg.top_n)
    combined.eval()
    with torch.no_grad():  # a specialist whose head does not fit its subset fails here, not later
        combined(transfer.x[:2].to(dev))
    return combined


def _check_finished(run: Run, key: str, value: str, device) -> nn.Module | None:
    """A finished model of ``run`` that records ``key == value``; refused when it records another."""
    done = run.load_finished(device)
    if done is None:
        return None
    model, meta = done
    if meta.get(key) != value:
        raise ValueError(f"{run.model_path} was trained from other models or data (its {key} "
                         "differs); use a new output folder or overwrite it")
    return model


def _q_cache_state(folder: Path, fp: str, trained_on_it: bool) -> bool:
    """Whether the q-cache in ``folder`` is this one (True) or missing (False).

    A q-cache of other models or inputs is refused when a merged model was (partly) trained on it,
    else it is rebuilt (said in one line); it is never read as this one.
    """
    try:
        open_cache(folder, fp).close()
        return True
    except FileNotFoundError:
        return False
    except FormatError as e:
        if trained_on_it:
            raise ValueError(
                f"{folder}: the q-cache was computed from other models or transfer inputs than "
                "these, and the merged model there was trained on it; use a new output folder or "
                f"overwrite it ({' '.join(str(e).split())})"
            ) from None
        log.warning("rebuilding the q-cache: %s holds the combination of other models or inputs",
                    folder)
        return False


def _control_objective(cfg: MergeConfig, control_config: DistillConfig | None) -> DistillConfig:
    dcfg = control_config or DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha)
    dcfg = dataclasses.replace(dcfg, extra={}).validate()
    if (dcfg.views is not None and not dcfg.views.plain) or dcfg.jitter:
        raise ValueError("the control must see the merged model's inputs: give it a distillation "
                         "config without views or jitter")
    return dcfg


def distill_specialists(
    generalist: nn.Module,
    specialists: Sequence[Specialist],
    transfer: TransferSet,
    train_config: TrainConfig,
    config: MergeConfig | None = None,
    out_dir: str | os.PathLike = "merged",
    *,
    control_teachers: Sequence[nn.Module] = (),
    control_config: DistillConfig | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    meta: dict | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
) -> MergeResult:
    """Distil generalist + specialists into one model of the generalist's architecture, and train
    its control (module docstring). Resumable: a finished model is loaded, an interrupted one
    continues from its checkpoint bit for bit.

    Args:
        generalist: the trained generalist (left unchanged); both models start from its weights.
        specialists: its trained specialists (:func:`specialists.specialist.load_specialists`).
        transfer: the transfer set: inputs (N, ...) and, when labelled, labels for the hard term.
        train_config: the budget of the merged model and of the control alike (epochs, batch
            size, lr, schedule, seed: same seed, same batches).
        config: temperature, alpha, top_n, the control's kind, q-cache dtype.
        out_dir: receives ``q_cache/``, ``model/`` and ``control/``.
        control_teachers: the teachers of control ``"teachers"``.
        control_config: the control's distillation settings (``"teachers"``: the generalist's own
            temperature, alpha, combine mode; ``"self"``: default the merge's T and alpha); no
            views or jitter.
        val: validation (x, y), logged every epoch.
        meta: JSON-able facts saved with both models (e.g. the data fingerprint).
        device, progress: as for :func:`ensemble_kd.train.train`.
        say: receives stage messages (default: none).

    Returns:
        :class:`MergeResult` (merged model, control, the combination, the q fingerprint).

    Raises:
        ValueError: no specialists, invalid subsets, an empty transfer set, a control that lacks
            what it needs, bad settings, or files in ``out_dir`` from other models (a q-cache a
            merged model was trained on, a finished model of other inputs); raised before anything
            is written.
    """
    cfg = (config or MergeConfig()).validate()
    train_config = train_config.validate()
    say = say or (lambda _msg: None)
    folders = merge_folders(out_dir)
    combined = check_merge_inputs(generalist, specialists, transfer, cfg, control_teachers)
    views = cfg.views_for(tuple(transfer.x.shape[1:]))
    dcfg = DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha, cache_dtype=cfg.cache_dtype,
                         views=views)
    ccfg = _control_objective(cfg, control_config) if cfg.control != "labels" else None
    if ccfg is not None:
        ccfg = dataclasses.replace(ccfg, views=views)  # the merged model's inputs
    fp = q_fingerprint(combined, transfer.x, cfg.cache_dtype, views)
    model_run, control_run = Run(folders["model"]), Run(folders["control"])
    control_teachers = list(control_teachers) if cfg.control == "teachers" else [generalist]
    control_fp = teachers_fingerprint([generalist, *control_teachers]) + cfg.control
    if views is not None:  # plain inputs keep the fingerprint of controls from before views
        control_fp += json.dumps(views.as_dict(), sort_keys=True)
    merged = _check_finished(model_run, "q_fingerprint", fp, device)
    control = _check_finished(control_run, "control_fingerprint", control_fp, device)
    trained = model_run.finished() or model_run.checkpoint_path.exists()
    have_q = _q_cache_state(folders["q_cache"], fp, trained)
    common = {**(meta or {}), "top_n": cfg.top_n, "subsets": combined.subsets,
              "train_config": dataclasses.asdict(train_config),
              "views": None if views is None else views.as_dict()}

    if merged is None:
        if not have_q:
            on = "" if views is None else f"{views.views} views of each of "
            say(f"computing q, generalist + {len(specialists)} specialists combined, over "
                f"{on}{len(transfer)} transfer examples")
            write_cache([combined], transfer.x, folders["q_cache"], dtype=cfg.cache_dtype,
                        device=device, fingerprint=fp, views=views).close()
        say(f"distilling q into the generalist's architecture (T={cfg.temperature:g}, "
            f"alpha={cfg.alpha:g}, {train_config.epochs} epochs)")
        result = distill(copy.deepcopy(generalist), [combined], transfer, train_config, dcfg,
                         val=val, run_dir=folders["model"], cache_dir=folders["q_cache"],
                         device=device, progress=progress)
        merged = result.model
        model_run.finish(merged, {**common, "role": "merged", "q_fingerprint": fp,
                                  "temperature": cfg.temperature, "alpha": cfg.alpha})
    if control is None:
        say(f"training the control: the generalist for the same budget on its own objective "
            f"({cfg.control}), without specialists")
        if cfg.control == "labels":
            result = train_baseline(copy.deepcopy(generalist), transfer, train_config, views=views,
                                    val=val, run_dir=folders["control"], device=device,
                                    progress=progress, extra_state={"control": control_fp})
        else:
            result = distill(copy.deepcopy(generalist), control_teachers, transfer, train_config,
                             ccfg, val=val, run_dir=folders["control"], device=device,
                             progress=progress)
        control = result.model
        settings = {} if ccfg is None else {"temperature": ccfg.temperature, "alpha": ccfg.alpha}
        control_run.finish(control, {**common, "role": "control", "control": cfg.control,
                                     "control_fingerprint": control_fp, **settings})
    return MergeResult(merged.eval(), control.eval(), combined, fp)
