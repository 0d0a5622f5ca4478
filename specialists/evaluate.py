"""How much the specialists help: accuracies, conditional accuracy and gains by coverage.

Follows the evaluation of Hinton, Vinyals & Dean (2015, sec. 5.4, tables 4-5; PAPER_NUMBERS.md E5):

* *test accuracy* of the generalist alone and of generalist + specialists combined;
* *conditional accuracy*: only the test cases whose true class some specialist covers, with the
  prediction restricted to the covered classes (the argmax over the union of all subsets);
* the change in correct top-1 predictions grouped by how many specialists cover the true class.

Since a strong generalist leaves little accuracy to gain, the relative *error* reduction is
reported beside the relative gain in accuracy (PAPER_NUMBERS.md, "Comparing fairly").
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .subsets import coverage, validate_subsets

CombineFn = Callable[..., torch.Tensor]


def _as_tensor(x: object, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} is {type(x).__name__}, expected a tensor or numpy array")
    return x.detach().cpu()


def _check_inputs(generalist_probs, specialist_probs, subsets, y):
    p_g = _as_tensor(generalist_probs, "generalist_probs")
    if p_g.ndim != 2 or not p_g.is_floating_point():
        raise ValueError(
            f"generalist_probs must be a float (N, C) array, got {p_g.dtype} {tuple(p_g.shape)}"
        )
    n, c = p_g.shape
    subsets = validate_subsets(subsets, c)
    if isinstance(specialist_probs, torch.Tensor | np.ndarray) or not isinstance(
        specialist_probs, Sequence
    ):
        raise ValueError("specialist_probs must be a list with one (N, |S_m|+1) array per subset")
    if len(specialist_probs) != len(subsets):
        raise ValueError(
            f"got {len(specialist_probs)} specialist outputs for {len(subsets)} subsets"
        )
    p_ms = []
    for m, (p, s) in enumerate(zip(specialist_probs, subsets, strict=True)):
        p = _as_tensor(p, f"specialist_probs[{m}]")
        if tuple(p.shape) != (n, len(s) + 1):
            raise ValueError(
                f"specialist_probs[{m}] has shape {tuple(p.shape)}, expected {(n, len(s) + 1)} "
                f"(subsets[{m}] has {len(s)} classes, plus the dustbin)"
            )
        p_ms.append(p)
    y = _as_tensor(y, "y")
    if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must be (N,) = ({n},) integer labels, got {y.dtype} {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(
            f"y holds labels in [{int(y.min())}, {int(y.max())}] but there are only {c} classes"
        )
    return p_g, p_ms, subsets, y.long()


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _coverage_rows(
    cov: torch.Tensor, gen_ok: torch.Tensor, comb_ok: torch.Tensor, top_row: int, max_row: int
) -> list[dict]:
    """Rows 0 .. top_row of the table of gains by coverage; row ``max_row`` is 'max_row or more'."""
    rows = []
    for k in range(top_row + 1):
        grouped = k == max_row  # the cap: "k or more", even when nothing exceeds k
        sel = cov >= k if grouped else cov == k  # (N,)
        g, cmb = int(gen_ok[sel].sum()), int(comb_ok[sel].sum())
        rows.append(
            {
                "covering": k,
                "label": f"{k} or more" if grouped else str(k),
                "n": int(sel.sum()),
                "generalist_correct": g,
                "combined_correct": cmb,
                "change": cmb - g,
                "relative_change": _ratio(cmb - g, g),
            }
        )
    return rows


@torch.no_grad()
def evaluate_specialists(
    generalist_probs: torch.Tensor,
    specialist_probs: Sequence[torch.Tensor],
    subsets: Sequence[Sequence[int]],
    y: torch.Tensor,
    *,
    top_n: int | None = 1,
    combine: CombineFn | None = None,
    max_row: int = 10,
) -> dict:
    """Compare the generalist with generalist + specialists on labelled data.

    Args:
        generalist_probs: (N, C) generalist probabilities.
        specialist_probs: M arrays, the m-th (N, |S_m| + 1): specialist m's probabilities over S_m
            then the dustbin (:func:`specialists.specialist.specialist_probs`).
        subsets: the M subsets S_m.
        y: (N,) true labels.
        top_n: a specialist is active for an example when its subset holds one of the
            generalist's top_n classes (None: all specialists always).
        combine: ``(generalist_probs, specialist_probs, subsets, top_n=...) -> (N, C)`` combined
            probabilities; default :func:`specialists.combine.combine_predictions`.
        max_row: the coverage table has one row per count 0 .. max_row - 1 and one row for
            "max_row or more" (the paper used 10).

    Returns:
        A JSON-able dict: ``n``, ``n_specialists``, ``top_n``, ``n_covered`` (cases whose true class
        some subset holds), ``generalist_acc``, ``combined_acc``, ``generalist_correct``,
        ``combined_correct``, ``relative_gain`` (in accuracy), ``relative_error_reduction``,
        ``generalist_conditional_acc``, ``combined_conditional_acc`` (None when nothing is
        covered), ``mean_active`` (active specialists per example) and ``by_coverage``, a list of
        rows ``{covering, label, n, generalist_correct, combined_correct, change,
        relative_change}`` (relative to the generalist's correct count; None when it is 0).
    """
    from .combine import active_specialists

    if combine is None:
        from .combine import combine_predictions as combine
    if isinstance(max_row, bool) or not isinstance(max_row, numbers.Integral) or max_row < 1:
        raise ValueError(f"max_row is {max_row!r}, expected a positive int")
    p_g, p_ms, subsets, y = _check_inputs(generalist_probs, specialist_probs, subsets, y)
    n, c = p_g.shape
    if n == 0:
        raise ValueError("no examples to evaluate (N = 0)")

    combined = _as_tensor(combine(p_g, p_ms, subsets, top_n=top_n), "combined probabilities")
    if tuple(combined.shape) != (n, c):
        raise ValueError(f"combine returned shape {tuple(combined.shape)}, expected {(n, c)}")
    active = active_specialists(p_g, subsets, top_n)  # (N, M)

    gen_ok = p_g.argmax(1) == y  # (N,)
    comb_ok = combined.argmax(1) == y  # (N,)

    # Conditional accuracy: covered cases only, argmax over the union of the subsets' classes.
    union = torch.zeros(c, dtype=torch.bool)
    for s in subsets:
        union[torch.tensor(s)] = True
    covered = union[y]  # (N,)
    outside = torch.tensor(float("-inf"))

    def conditional(probs: torch.Tensor) -> float | None:
        if not covered.any():
            return None
        pred = torch.where(union, probs.double(), outside).argmax(1)  # (N,)
        return float((pred[covered] == y[covered]).double().mean())

    cov = coverage(y, subsets)  # (N,) subsets holding each true class
    top_row = min(max_row, int(cov.max()))
    g_correct, c_correct = int(gen_ok.sum()), int(comb_ok.sum())
    g_acc, c_acc = g_correct / n, c_correct / n
    return {
        "n": n,
        "n_specialists": len(subsets),
        "top_n": top_n,
        "n_covered": int(covered.sum()),
        "generalist_correct": g_correct,
        "combined_correct": c_correct,
        "generalist_acc": g_acc,
        "combined_acc": c_acc,
        "relative_gain": _ratio(c_acc - g_acc, g_acc),
        "relative_error_reduction": _ratio((1 - g_acc) - (1 - c_acc), 1 - g_acc),
        "generalist_conditional_acc": conditional(p_g),
        "combined_conditional_acc": conditional(combined),
        "mean_active": float(active.sum(1).double().mean()),
        "by_coverage": _coverage_rows(cov, gen_ok, comb_ok, top_row, max_row),
    }


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    if signed and round(100 * x, 1) != 0:
        return f"{100 * x:+.1f}%"
    return f"{abs(100 * x) if signed else 100 * x:.1f}%"  # no "+0.0%" / "-0.0%"


def _signed(k: int) -> str:
    return f"{k:+,}" if k else "0"


def format_coverage_table(result: dict) -> str:
    """Markdown tables like the paper's (PAPER_NUMBERS.md E5) from :func:`evaluate_specialists`.

    Returns:
        The accuracy table (conditional and test accuracy), a line with the relative gain and error
        reduction, and the table of gains by how many specialists cover the true class.
    """
    m = result["n_specialists"]
    lines = [
        "| system | conditional accuracy | test accuracy |",
        "|---|---:|---:|",
        f"| generalist | {_pct(result['generalist_conditional_acc'])} "
        f"| {_pct(result['generalist_acc'])} |",
        f"| + {m} specialist{'s' if m != 1 else ''} | {_pct(result['combined_conditional_acc'])} "
        f"| {_pct(result['combined_acc'])} |",
        "",
        f"Relative gain in test accuracy: {_pct(result['relative_gain'], True)}; relative error "
        f"reduction: {_pct(result['relative_error_reduction'], True)} (top-n = {result['top_n']}, "
        f"{result['mean_active']:.2f} active specialists per example, "
        f"{result['n_covered']:,} of {result['n']:,} test cases covered).",
        "",
        "| # covering | test cases | generalist correct | combined correct "
        "| change in correct | relative |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["by_coverage"]:
        lines.append(
            f"| {r['label']} | {r['n']:,} | {r['generalist_correct']:,} | "
            f"{r['combined_correct']:,} | {_signed(r['change'])} | "
            f"{_pct(r['relative_change'], True)} |"
        )
    return "\n".join(lines) + "\n"
