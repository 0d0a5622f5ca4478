"""The dustbin correction: undo the class prior of a specialist's training mix (DESIGN.md sec. 3).

A specialist is trained on batches in which its subset S is over-represented (half of each batch
by default), so the class prior it learns is the mix's, not nature's. Two corrections, both a
single number added to the dustbin logit:

* :func:`dustbin_log_correction`, the closed form for hard labels (``alpha = 0``). Bayes' rule for
  a prior shift adds ``log(pi_nat(c) / pi_train(c))`` to every logit c. The classes of S all share
  one factor, ``log(nat_in / train_in)``, and a softmax ignores what every logit shares, so the
  same shift is ``log(nat_out / train_out) + log(train_in / nat_in)`` on the dustbin alone.
* :func:`fit_dustbin_correction`, for soft targets (``alpha > 0``). The generalist's targets carry
  the natural posterior whatever the input mix, so the learned prior is a blend of the two and
  has no closed form; the bias is fitted instead on held-out data in its natural proportions by
  minimising the specialist's negative log-likelihood over that one number (a convex problem).

And one that goes further, for any alpha: :func:`fit_vector_scaling` fits a temperature and one
bias per output on the natural held-out data (Guo et al. 2017's vector scaling with one shared
scale). It corrects the prior of every output, not just the dustbin's, and a specialist's
overconfidence after training on hard labels; with both, the combination of overlapping
specialists no longer counts one specialist's bias twice (E5_PILOT_NOTE in
``scripts/paper/presets.py``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import expit, logit, logsumexp


def _share(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} is {value!r}, expected a number in (0, 1)")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return float(value)


def dustbin_log_correction(natural_dustbin_share: float, training_dustbin_share: float) -> float:
    """The prior-shift correction of the dustbin logit for a specialist trained on hard labels.

    ``log(nat_out / train_out) + log(train_in / nat_in)`` with ``out`` the dustbin's share and
    ``in = 1 - out`` the subset's. Example: a subset holding 10% of the data trained on a 50/50
    mix gives ``log(0.9 / 0.5) + log(0.5 / 0.1) = log 9``.

    Args:
        natural_dustbin_share: fraction of natural data outside the subset, in (0, 1).
        training_dustbin_share: fraction of the training mix outside the subset, in (0, 1).

    Returns:
        The correction in logit units (nats).
    """
    nat_out = _share(natural_dustbin_share, "natural_dustbin_share")
    train_out = _share(training_dustbin_share, "training_dustbin_share")
    return math.log(nat_out / train_out) + math.log((1.0 - train_out) / (1.0 - nat_out))


def _checked(logits: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    """Check a calibration set; return its logits (N, K) as float64 and its targets (N,)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().double().numpy()
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2 (dustbin last), got {z.shape}")
    if t.shape != (z.shape[0],) or t.dtype.kind not in "iu":
        raise ValueError(f"targets must be (N,) = ({z.shape[0]},) ints, got {t.dtype} {t.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain non-finite values")
    k = z.shape[1]
    if t.size and (t.min() < 0 or t.max() >= k):
        raise ValueError(f"targets must lie in [0, {k - 1}] (dustbin = {k - 1})")
    dust = t == k - 1
    if not dust.any():
        raise ValueError("the calibration data hold no example outside the subset (dustbin)")
    if dust.all():
        raise ValueError("the calibration data hold no example of the subset's classes")
    return z, t


def _dustbin_margin(logits: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs; return u = dustbin logit - logsumexp(other logits) (N,) and is-dustbin (N,)."""
    z, t = _checked(logits, targets)
    return z[:, -1] - logsumexp(z[:, :-1], axis=1), t == z.shape[1] - 1


def fit_dustbin_correction(logits: torch.Tensor | np.ndarray,
                           targets: torch.Tensor | np.ndarray) -> float:
    """The bias b added to the dustbin logit that minimises the NLL of ``targets``.

    With ``u_i`` the dustbin logit minus the logsumexp of the others, the dustbin's probability
    after the shift is ``sigmoid(u_i + b)`` and the mean NLL is convex in b, with derivative
    ``mean_i sigmoid(u_i + b) - (share of dustbin targets)``. Its root, the minimiser, is
    bracketed exactly by ``logit(share) - max(u)`` and ``logit(share) - min(u)`` and found by
    Brent's method. At the optimum the mean predicted dustbin probability equals the dustbin's
    share of the calibration data: the calibration the correction is for.

    Args:
        logits: (N, |S| + 1) the specialist's logits on data in natural proportions, dustbin last.
        targets: (N,) labels in the specialist's space (``specialist_targets``; dustbin = |S|).

    Returns:
        b in nats (add it to the dustbin bias).

    Raises:
        ValueError: bad shapes, or targets that are all dustbin or all inside the subset.
    """
    u, dust = _dustbin_margin(logits, targets)
    share = float(dust.mean())

    def slope(b: float) -> float:
        return float(expit(u + b).mean()) - share

    lo, hi = logit(share) - u.max(), logit(share) - u.min()
    if hi - lo < 1e-12:  # every example has the same margin: the root is exact
        return float(lo)
    return float(brentq(slope, lo, hi, xtol=1e-12, rtol=4 * np.finfo(float).eps))


def fit_vector_scaling(logits: torch.Tensor | np.ndarray,
                       targets: torch.Tensor | np.ndarray) -> tuple[float, np.ndarray]:
    """A scale a > 0 and biases b (K,) that minimise the NLL of ``targets`` under
    ``softmax(a * logits + b)``: the temperature T = 1 / a and a bias per output.

    The NLL is convex in (a, b) (a multinomial logistic regression on the fixed logits), so
    L-BFGS in float64 from a = 1, b = 0 finds the minimiser; at it, the mean predicted
    probability of every output equals its share of ``targets`` (the bias's stationarity
    condition), so the fitted outputs are calibrated in the large on the calibration data. b is
    returned with the subset's biases (all but the last) averaging 0, so ``b[-1]`` is the
    dustbin's shift against them.

    Args:
        logits: (N, K) a specialist's logits on data in natural proportions, dustbin last.
        targets: (N,) labels in the specialist's space (dustbin = K - 1).

    Returns:
        (a, b): the scale (1 / temperature) and the (K,) biases, as float64.

    Raises:
        ValueError: bad shapes, targets that are all dustbin or all inside the subset, or logits
            that carry no signal on this data (the best scale is not positive).
    """
    z_np, t_np = _checked(logits, targets)  # the same checks as the dustbin-only fit
    z, t = torch.from_numpy(z_np), torch.from_numpy(t_np).long()
    z = z - z.mean(1, keepdim=True)  # a softmax ignores a shift per row; better conditioned
    a = torch.ones((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a * z + b, t)
        loss.backward()
        return loss

    opt.step(closure)
    scale = float(a.detach())
    if not scale > 0.0:
        raise ValueError("the specialist's logits carry no signal on the calibration data "
                         f"(best scale {scale:.3g} <= 0): nothing to calibrate with")
    bias = b.detach().numpy().copy()
    bias -= bias[:-1].mean()
    return scale, bias
