"""How much of the specialists' gain the merged model keeps, on labelled test data.

Four systems are compared on the same test examples: the generalist, the control (the generalist
trained on for the merge's budget without specialists), generalist + specialists combined, and the
merged model. The headline is the *share of the specialists' gain over the control that the merged
model keeps*,

    kept = (acc_merged - acc_control) / (acc_combined - acc_control),

with a 95% interval from a paired bootstrap over test examples
(:func:`ensemble_kd.metrics.paired_bootstrap`). It is 1 when the merged model is as accurate as
the combination, 0 when it gains nothing over extra training alone; it is undefined (None) when
the combination is not more accurate than the control.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ensemble_kd.metrics import evaluate, kl_divergence, paired_bootstrap
from ensemble_kd.models import count_parameters
from ensemble_kd.predict import predict_logits

from .combine import combine_predictions
from .specialist import specialist_probs
from .training import Specialist

__all__ = ["SYSTEMS", "evaluate_merge", "format_merge_report", "gain_kept"]

SYSTEMS = ("generalist", "control", "combined", "merged")  # the columns of the bootstrap, in order


def gain_kept(means: np.ndarray) -> float | None:
    """``(merged - control) / (combined - control)`` of the accuracies ``means`` (4,) in the order
    of :data:`SYSTEMS`; None when the combination is not more accurate than the control (no gain
    to keep; the reproduction's ``share_of_gap`` convention)."""
    gain = float(means[2] - means[1])
    if not gain > 0:
        return None
    return float(means[3] - means[1]) / gain


@torch.no_grad()
def merge_probs(
    generalist: nn.Module,
    specialists: Sequence[Specialist],
    merged: nn.Module,
    control: nn.Module,
    x: torch.Tensor,
    *,
    top_n: int | None = 1,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """The four systems' predicted distributions on ``x``: ``{name: (N, C)}`` for each name in
    :data:`SYSTEMS` (the combination solved once, with the ``top_n`` activity rule)."""
    probs = {"generalist": torch.softmax(predict_logits(generalist, x, device=device), -1)}
    ps = specialist_probs(specialists, x, device=device)
    probs["combined"] = combine_predictions(probs["generalist"], ps,
                                            [sp.subset for sp in specialists], top_n=top_n)
    for name, model in (("control", control), ("merged", merged)):
        probs[name] = torch.softmax(predict_logits(model, x, device=device), -1)
    return probs


@torch.no_grad()
def evaluate_merge(
    generalist: nn.Module,
    specialists: Sequence[Specialist],
    merged: nn.Module,
    control: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    top_n: int | None = 1,
    n_resamples: int = 2000,
    seed: int = 0,
    device: str | torch.device | None = None,
    probs: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Compare generalist, control, generalist + specialists and the merged model on (x, y).

    Args:
        generalist, specialists, merged, control: the four systems' models.
        x: (N, *input_shape) test inputs.
        y: (N,) test labels.
        top_n: the combination's activity rule (as the merged model was distilled with).
        n_resamples, seed: the paired bootstrap.
        device: where to run the models.
        probs: :func:`merge_probs` of the same models on ``x``, when the caller has them already.

    Returns:
        A JSON-able dict: ``n``; ``systems``: per system ``{accuracy, error, nll, ece, top5,
        params, kl_from_combined}`` (``kl_from_combined``: mean KL(q || system) in nats);
        ``gain_kept``: the bootstrap result of :func:`gain_kept` (estimate, low, high, ...);
        ``combined_gain`` and ``merged_gain``: accuracy over the control, with intervals;
        ``inference_params``: parameters run per example by the merged model and by the combination.
    """
    if probs is None:
        probs = merge_probs(generalist, specialists, merged, control, x, top_n=top_n,
                            device=device)
    gen_params = count_parameters(generalist)
    params = {"generalist": gen_params, "control": count_parameters(control),
              "merged": count_parameters(merged),
              "combined": gen_params + sum(count_parameters(sp.model) for sp in specialists)}
    systems = {}
    for name in SYSTEMS:
        systems[name] = {**evaluate(probs[name], y), "params": params[name],
                         "kl_from_combined": kl_divergence(probs["combined"], probs[name])}
    correct = np.stack([(probs[s].argmax(1) == y).numpy() for s in SYSTEMS], 1).astype(float)

    def boot(stat):
        return paired_bootstrap(correct, stat, n_resamples=n_resamples, seed=seed)

    return {
        "n": int(len(y)),
        "top_n": top_n,
        "n_specialists": len(specialists),
        "systems": systems,
        "gain_kept": boot(gain_kept),
        "combined_gain": boot(lambda m: m[2] - m[1]),
        "merged_gain": boot(lambda m: m[3] - m[1]),
        "inference_params": {"merged": params["merged"], "combined": params["combined"]},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _interval(r: dict, pct: bool = True) -> str:
    fmt = _pct if pct else (lambda v: "n/a" if v is None else f"{v:.3f}")
    return (f"{fmt(r['estimate'])} (95% interval {fmt(r['low'])} to {fmt(r['high'])}"
            + (f"; {r['n_undefined']} of {r['n_resamples']} resamples undefined"
               if r["n_undefined"] else "") + ")")


def _share_caveat(gain: dict) -> str:
    """A warning when the specialists' own gain is not clearly above 0: a share of it means little."""
    low = gain["low"]
    if low is not None and low > 0:
        return ""
    return (" The specialists' gain over the control is not clearly above 0 (its interval reaches "
            f"{_pct(low)}), so this share is a ratio of noise: do not read it as kept knowledge.")


def format_merge_report(report: dict) -> str:
    """Markdown: the table of the four systems and the share of the gain kept, with intervals."""
    names = {"generalist": "generalist", "control": "control (generalist trained on, no specialists)",
             "combined": f"generalist + {report['n_specialists']} specialist"
                         + ("s" if report["n_specialists"] != 1 else ""),
             "merged": "merged (one model, distilled on q)"}
    lines = ["| system | params | accuracy | NLL | KL(q ‖ system) |", "|---|---:|---:|---:|---:|"]
    for s in SYSTEMS:
        r = report["systems"][s]
        lines.append(f"| {names[s]} | {r['params']:,} | {_pct(r['accuracy'])} | {r['nll']:.4f} | "
                     f"{max(0.0, r['kl_from_combined']):.4f} |")  # no "-0.0000" from rounding
    p = report["inference_params"]
    lines += [
        "",
        f"Specialists' gain over the control: {_interval(report['combined_gain'])}; the merged "
        f"model's: {_interval(report['merged_gain'])}.",
        f"Share of the specialists' gain the merged model keeps: "
        f"{_interval(report['gain_kept'], pct=False)} (paired bootstrap over {report['n']:,} test "
        f"examples; top-n = {report['top_n']}).{_share_caveat(report['combined_gain'])}",
        f"The merged model runs at the generalist's inference cost: {p['merged']:,} parameters per "
        f"example, against {p['combined']:,} for generalist + specialists.",
    ]
    return "\n".join(lines) + "\n"
