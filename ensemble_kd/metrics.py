"""Classification metrics on predicted distributions, and a Markdown table printer.

Inputs are ``probs (N, C)`` (rows sum to 1) or, where said, logits or hard
predictions, with integer labels ``y (N,)``. Tensors or numpy arrays are
accepted; results are python floats so they go straight into JSON and tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

# Rows of probabilities may come from float16 autocast; logits passed by
# mistake are off by far more than this.
_ROW_SUM_TOL = 1e-2


def _tensor(a: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(a).detach().cpu()
    if t.is_complex():
        raise ValueError(f"{name} must be real, got {t.dtype}")
    return t


def _labels(y: ArrayLike, n: int, n_classes: int | None = None) -> torch.Tensor:
    y = _tensor(y, "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer labels, got {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} labels but there are {n} predictions")
    if n == 0:
        raise ValueError("no examples: metrics of an empty set are undefined")
    if int(y.min()) < 0 or (n_classes is not None and int(y.max()) >= n_classes):
        hi = "" if n_classes is None else f" [0, {n_classes})"
        raise ValueError(f"y holds labels in [{int(y.min())}, {int(y.max())}], outside{hi}")
    return y.long()


def _scores(scores: ArrayLike, name: str) -> torch.Tensor:
    s = _tensor(scores, name)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D (N, C) with C >= 1, got shape {tuple(s.shape)}")
    return s.float()


def _probs(probs: ArrayLike) -> torch.Tensor:
    p = _scores(probs, "probs")
    if p.numel() and (
        not torch.isfinite(p).all() or float(p.min()) < -1e-6 or float(p.max()) > 1 + 1e-6
    ):
        raise ValueError("probs must be probabilities in [0, 1]; pass softmax(logits)")
    err = (p.sum(1) - 1).abs()  # (N,)
    if p.numel() and float(err.max()) > _ROW_SUM_TOL:
        row = int(err.argmax())
        raise ValueError(
            f"probs rows must sum to 1, row {row} sums to {float(p[row].sum()):.4g}; "
            "pass softmax(logits)"
        )
    return p


def _predictions(pred_or_scores: ArrayLike, name: str) -> tuple[torch.Tensor, int | None]:
    """Hard predictions (N,) from predictions (N,) or scores (N, C); also C when known."""
    t = _tensor(pred_or_scores, name)
    if t.ndim == 2:
        return _scores(t, name).argmax(1), t.shape[1]
    if t.ndim == 1 and not (t.is_floating_point() or t.dtype == torch.bool):
        return t.long(), None
    raise ValueError(
        f"{name} must be scores (N, C) or integer predictions (N,), "
        f"got shape {tuple(t.shape)} dtype {t.dtype}"
    )


def accuracy(probs_or_logits: ArrayLike, y: ArrayLike) -> float:
    """Fraction of examples whose top-scoring class is the label.

    Args:
        probs_or_logits: ``(N, C)`` probabilities or logits (argmax is the same),
            or ``(N,)`` integer predictions.
        y: ``(N,)`` integer labels.
    """
    pred, n_classes = _predictions(probs_or_logits, "probs_or_logits")
    y = _labels(y, pred.shape[0], n_classes)
    return float((pred == y).double().mean())


def top_k_accuracy(probs: ArrayLike, y: ArrayLike, k: int = 5) -> float:
    """Fraction of examples whose label is among the ``k`` highest scores (k clipped to C).

    Args:
        probs: ``(N, C)`` probabilities or logits.
        y: ``(N,)`` integer labels.
        k: how many top classes count as a hit, at least 1.
    """
    p = _scores(probs, "probs")
    y = _labels(y, p.shape[0], p.shape[1])
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    top = p.topk(min(k, p.shape[1]), dim=1).indices  # (N, k)
    return float((top == y[:, None]).any(1).double().mean())


def nll(probs: ArrayLike, y: ArrayLike) -> float:
    """Mean negative log-likelihood ``-log p_y`` in nats; ``p_y`` clamped at 1e-12.

    Args:
        probs: ``(N, C)`` probabilities.
        y: ``(N,)`` integer labels.
    """
    p = _probs(probs)
    y = _labels(y, p.shape[0], p.shape[1])
    p_y = p.double().gather(1, y[:, None]).squeeze(1)  # (N,)
    return float(-p_y.clamp_min(1e-12).log().mean())


def expected_calibration_error(probs: ArrayLike, y: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width confidence bins (Guo et al. 2017).

    ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` where the confidence is the top
    probability and bin b holds confidences in ``(b/n_bins, (b+1)/n_bins]``
    (confidence 0 joins the first bin).

    Args:
        probs: ``(N, C)`` probabilities.
        y: ``(N,)`` integer labels.
        n_bins: number of bins on [0, 1].
    """
    p = _probs(probs)
    y = _labels(y, p.shape[0], p.shape[1])
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf, pred = p.double().max(1)  # (N,), (N,)
    correct = (pred == y).double()
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)  # (N,)
    sum_conf = torch.bincount(bins, weights=conf, minlength=n_bins)
    sum_acc = torch.bincount(bins, weights=correct, minlength=n_bins)
    # |B| * |acc_b - conf_b| = |sum_acc - sum_conf|: empty bins contribute 0.
    return float((sum_acc - sum_conf).abs().sum() / p.shape[0])


def per_class_accuracy(pred_or_probs: ArrayLike, y: ArrayLike, n_classes: int) -> list[float]:
    """Accuracy on the examples of each class (recall); nan for a class with no example.

    Args:
        pred_or_probs: ``(N,)`` integer predictions or ``(N, C)`` scores.
        y: ``(N,)`` integer labels in ``[0, n_classes)``.
        n_classes: number of classes C.

    Returns:
        ``n_classes`` floats.
    """
    pred, c = _predictions(pred_or_probs, "pred_or_probs")
    if c is not None and c != n_classes:
        raise ValueError(f"pred_or_probs has {c} columns but n_classes is {n_classes}")
    y = _labels(y, pred.shape[0], n_classes)
    total = torch.bincount(y, minlength=n_classes).double()  # (C,)
    hits = torch.bincount(y[pred == y], minlength=n_classes).double()
    return [h / t if t else math.nan for h, t in zip(hits.tolist(), total.tolist(), strict=True)]


def evaluate(probs: ArrayLike, y: ArrayLike) -> dict[str, float | int]:
    """The standard summary of predicted distributions.

    Args:
        probs: ``(N, C)`` probabilities.
        y: ``(N,)`` integer labels.

    Returns:
        ``{"accuracy", "error", "top5", "nll", "ece", "n"}``: fractions in [0, 1],
        NLL in nats, ``n`` the number of examples.
    """
    p = _probs(probs)
    y = _labels(y, p.shape[0], p.shape[1])
    acc = accuracy(p, y)
    return {
        "accuracy": acc,
        "error": 1.0 - acc,
        "top5": top_k_accuracy(p, y, k=5),
        "nll": nll(p, y),
        "ece": expected_calibration_error(p, y),
        "n": int(p.shape[0]),
    }


def disagreement(member_probs: ArrayLike) -> float:
    """Mean pairwise disagreement of an ensemble's hard predictions.

    For each pair of members, the fraction of examples on which their argmax
    differs, averaged over all ``K (K - 1) / 2`` pairs; 0 for a single member.

    Args:
        member_probs: ``(K, N, C)`` probabilities or logits of K members.
    """
    t = _tensor(member_probs, "member_probs")
    if t.ndim != 3 or t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"member_probs must be (K, N, C) with N, C >= 1, got {tuple(t.shape)}")
    k, n, c = t.shape
    if k < 2:
        return 0.0
    pred = t.float().argmax(2)  # (K, N)
    votes = torch.zeros(n, c, dtype=torch.float64).scatter_add_(
        1, pred.T, torch.ones(n, k, dtype=torch.float64)
    )  # (N, C): members voting for each class
    # Agreeing pairs on an example: sum_c votes_c choose 2; the rest disagree.
    agree = (votes * (votes - 1) / 2).sum(1)  # (N,)
    pairs = k * (k - 1) / 2
    return float((pairs - agree).mean() / pairs)


def agreement(probs_a: ArrayLike, probs_b: ArrayLike) -> float:
    """Fraction of examples on which two models' top classes are the same (fidelity, Stanton et
    al. 2021).

    Args:
        probs_a, probs_b: ``(N, C)`` probabilities or logits of the two models.
    """
    a, _ = _predictions(probs_a, "probs_a")
    b, _ = _predictions(probs_b, "probs_b")
    if a.shape != b.shape:
        raise ValueError(f"the two predictions differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a == b).double().mean())


def kl_divergence(reference: ArrayLike, probs: ArrayLike) -> float:
    """Mean ``KL(reference || probs)`` over examples, in nats (0 log 0 = 0; probs clamped at 1e-12).

    Args:
        reference: ``(N, C)`` probabilities of the reference (e.g. the ensemble).
        probs: ``(N, C)`` probabilities of the model compared with it (e.g. the student).
    """
    p, q = _probs(reference).double(), _probs(probs).double()
    if p.shape != q.shape:
        raise ValueError(f"the two distributions differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    return float((torch.special.xlogy(p, p) - p * q.clamp_min(1e-12).log()).sum(1).mean())


def _statistic(statistic: Callable[[np.ndarray], float], means: np.ndarray) -> float:
    """``statistic(means)`` as a float; nan where it divides by zero or returns None (undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            value = statistic(means)
        except ZeroDivisionError:
            return math.nan
    return math.nan if value is None else float(value)


def paired_bootstrap(
    columns: ArrayLike,
    statistic: Callable[[np.ndarray], float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Percentile interval of a statistic of per-system means, by a paired bootstrap over examples.

    Each resample draws N examples with replacement and keeps every system's value of an example
    together (paired): the interval then reflects how the systems differ on the same examples,
    not how hard the examples are. For accuracies, a column is ``(pred == y)`` as 0/1.

    Args:
        columns: ``(N, K)`` per-example values of K systems (e.g. correctness, 0/1).
        statistic: maps the K column means ``(K,)`` to a number, e.g. ``lambda m: m[1] - m[0]``.
            A resample where it is None or not finite (a ratio over 0) is left out and counted.
        n_resamples: bootstrap resamples, at least 1.
        confidence: coverage of the interval, in (0, 1).
        seed: the resamples are a pure function of it.

    The dictionary form of :func:`paired_bootstrap_ci` for a statistic of column means.

    Returns:
        ``{"estimate", "low", "high", "confidence", "n_resamples", "n_undefined"}``: the statistic
        on all examples, the interval (None when no resample gives a finite value) and how many
        resamples gave no finite value.
    """
    v = np.asarray(_tensor(columns, "columns").double().numpy())
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"columns must be (N, K) with N, K >= 1, got shape {v.shape}")
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    ci = paired_bootstrap_ci(lambda a: _statistic(statistic, a.mean(-1)), [v.T],
                             n_boot=int(n_resamples), level=confidence, seed=seed)
    finite = math.isfinite(ci.low)
    return {"estimate": ci.estimate if math.isfinite(ci.estimate) else None,
            "low": ci.low if finite else None, "high": ci.high if finite else None,
            "confidence": float(confidence), "n_resamples": int(n_resamples),
            "n_undefined": ci.n_boot - ci.n_valid}


def _scalar(value: Any) -> Any:
    """One-element tensors and arrays -> python scalars; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    return value


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def format_table(
    rows: Sequence[dict],
    columns: Sequence[str],
    *,
    floatfmt: str = ".4f",
    title: str | None = None,
) -> str:
    """An aligned GitHub-style Markdown table, readable as plain text in a terminal.

    Floats use ``floatfmt``; columns holding only numbers are right-aligned
    (``---:``); a key missing from a row, or None, gives an empty cell.

    Args:
        rows: one dict per table row.
        columns: the keys to show, in order (also the header).
        floatfmt: format spec for floats, e.g. ``".4f"`` or ``".2%"``.
        title: a line printed above the table, separated by a blank line.

    Returns:
        The table, without a trailing newline.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("format_table needs at least one column")
    if len(set(columns)) != len(columns):
        raise ValueError(f"format_table columns repeat a name: {columns}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"rows[{i}] must be a dict, got {type(row).__name__}")
    try:
        format(1.0, floatfmt)
    except ValueError:
        raise ValueError(f"floatfmt {floatfmt!r} is not a valid float format spec") from None
    header = [str(c).replace("|", "\\|") for c in columns]
    values = [[_scalar(row.get(c)) for c in columns] for row in rows]
    body = [[_cell(v, floatfmt) for v in vals] for vals in values]
    # A column is numeric (right-aligned) when every non-empty cell holds a number.
    numeric = [
        any(vals[j] is not None for vals in values)
        and all(_is_number(vals[j]) for vals in values if vals[j] is not None)
        for j in range(len(columns))
    ]
    widths = [max(3, len(h), *(len(line[j]) for line in body)) for j, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [
            s.rjust(w) if num else s.ljust(w)
            for s, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if num else "-" * (w + 2)
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    out = [line(header), rule, *(line(cells) for cells in body)]
    table = "\n".join(out)
    return f"{title}\n\n{table}" if title else table


class BootstrapCI(NamedTuple):
    """A percentile bootstrap interval of a statistic."""

    estimate: float  # the statistic on the data as given
    low: float  # lower end of the interval (nan when no replicate was defined)
    high: float  # upper end
    level: float  # e.g. 0.95
    n_boot: int  # replicates drawn
    n_valid: int  # replicates whose statistic was defined (finite)

    def as_list(self) -> list[float]:
        """``[low, high]`` (JSON-able)."""
        return [self.low, self.high]


def paired_bootstrap_ci(
    statistic: Callable[..., float | None],
    arrays: Sequence[ArrayLike],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
    replicates: bool | Sequence[bool] = False,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling examples jointly.

    The arrays are *paired*: their last axis indexes the same N examples (e.g. whether each of
    several models got test image i right), and every replicate draws one set of N example indices
    with replacement, applied to all of them, so the comparison between models keeps its pairing
    (Efron & Tibshirani 1993, ch. 13). Optionally whole groups of examples are drawn instead of
    single ones (``groups``), and the rows of an array (its axis 0: seeds, ensemble members) are
    resampled too (``replicates``), each array independently, so the interval also covers the
    spread over seeds.

    Args:
        statistic: ``f(*resampled) -> float`` on numpy arrays of the given shapes (rows may repeat
            when resampled); a replicate where it returns None or a non-finite value (e.g. a share
            of a gap that vanished) is dropped and counted out of ``n_valid``.
        arrays: each (N,) or (R, ..., N); the last axes all have length N.
        n_boot: replicates, >= 1.
        level: coverage of the interval, in (0, 1).
        seed: the generator's seed: the same seed, the same interval.
        groups: (N,) labels; replicates draw as many groups as there are, with replacement, and
            take all their examples (a cluster bootstrap). None: single examples.
        replicates: resample axis 0 of every array (True), of none (False), or one flag per array.

    Returns:
        :class:`BootstrapCI` (estimate on the original data, the percentile interval).

    Raises:
        ValueError: no arrays, last axes of different lengths, N = 0, a flag for an array without
            rows, ``groups`` of the wrong length, ``n_boot`` < 1 or ``level`` outside (0, 1).
    """
    data = [np.asarray(torch.as_tensor(a).detach().cpu().numpy() if isinstance(a, torch.Tensor)
                       else a) for a in arrays]
    if not data:
        raise ValueError("paired_bootstrap_ci needs at least one array")
    n = data[0].shape[-1] if data[0].ndim else 0
    if any(d.ndim == 0 or d.shape[-1] != n for d in data):
        raise ValueError("the arrays' last axes must all index the same N examples, got shapes "
                         f"{[d.shape for d in data]}")
    if n == 0:
        raise ValueError("no examples to resample (N = 0)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    flags = [bool(replicates)] * len(data) if isinstance(replicates, bool) else list(replicates)
    if len(flags) != len(data):
        raise ValueError(f"replicates has {len(flags)} flags for {len(data)} arrays")
    if any(f and d.ndim < 2 for f, d in zip(flags, data, strict=True)):
        raise ValueError("replicates: an array resampled by rows needs a row axis (R, ..., N)")
    members = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups must have one label per example ({n},), got {g.shape}")
        members = [np.flatnonzero(g == u) for u in np.unique(g)]

    def value(arrs) -> float:
        v = statistic(*arrs)
        return math.nan if v is None else float(v)

    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        if members is None:
            idx = rng.integers(0, n, n)
        else:
            idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        arrs = []
        for d, f in zip(data, flags, strict=True):
            if f:
                d = d[rng.integers(0, d.shape[0], d.shape[0])]
            arrs.append(d[..., idx])
        stats[b] = value(arrs)
    ok = stats[np.isfinite(stats)]
    tail = (1 - level) / 2
    low, high = (np.quantile(ok, [tail, 1 - tail]).tolist() if len(ok) else (math.nan, math.nan))
    return BootstrapCI(value(data), float(low), float(high), float(level), n_boot, int(len(ok)))
