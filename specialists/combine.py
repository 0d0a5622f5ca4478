"""Combine a generalist with dustbin specialists at inference (DESIGN.md sec. 3).

For one example, with generalist distribution ``p_g`` over C classes and
specialist m's distribution ``p_m`` over its subset S_m plus a dustbin, the
combined prediction is the distribution q over C classes that minimises

    f(q) = KL(p_g || q) + sum_{m active} KL(p_m || A_m q)

where ``A_m q`` folds q into S_m + dustbin (Hinton, Vinyals & Dean 2015,
sec. 5.3). Up to constants, ``-f`` is the log-likelihood of mixture weights q
for 1 + M "observations" with soft bins, so the EM update

    q_i <- q_i / (1 + M) * sum_m p_m[bin_m(i)] / (A_m q)[bin_m(i)]

(m over the generalist, whose bins are single classes, and the M active
specialists) never increases f and stays on the simplex. EM alone converges
linearly and can crawl, so :func:`combine_predictions` accelerates it with
SQUAREM (Varadhan & Roland 2008, scheme S3) behind a monotonicity safeguard,
and stops each example on a certified bound: since f is convex, with
``g = -grad f(q)``, ``f(q) - min f <= max_i g_i - q . g`` (the Frank-Wolfe
duality gap), so ``tol`` bounds how far the returned objective is from the
optimum.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specialists.subsets import fold_probs, validate_subsets

# Weight of the EM-from-uniform point used as the start where p_g is exactly zero:
# enough that EM can grow those classes if the specialists want them (a class at
# exactly zero stays there under a multiplicative update), small enough not to
# disturb the usual case.
_ZERO_FILL = 1e-3
# SQUAREM: halvings of the extrapolation step towards the plain EM point when the
# extrapolated point leaves the simplex.
_BACKTRACKS = 10


def _sum_atol(dtype: torch.dtype) -> float:
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def _check_probs(x: object, name: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    """Check a (B, K) tensor of distributions (rows sum to 1 within tolerance)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} is {type(x).__name__}, expected a torch.Tensor")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.ndim != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, x.shape, strict=True)
    ):
        want = tuple("?" if s is None else s for s in shape)
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {want}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    if (x < 0).any():
        raise ValueError(f"{name} contains negative probabilities")
    if x.numel():
        err = (x.double().sum(-1) - 1).abs()
        if (err > _sum_atol(x.dtype)).any():
            row = int(err.argmax())
            raise ValueError(
                f"{name} row {row} sums to {float(x[row].double().sum()):.6g}, not 1: "
                "expected probabilities (apply softmax to logits)"
            )
    return x


@dataclass(frozen=True)
class _Problem:
    """A batch of combination problems in float64, all specialists stacked.

    The K = sum_m |S_m| "inside" bins of all specialists are concatenated, so
    that one gather and one matmul fold q for every specialist at once, with no
    python loop over specialists in the solver.
    """

    p_g: torch.Tensor  # (B, C) generalist probabilities
    p_in: torch.Tensor  # (B, K) specialists' probabilities of their own classes
    p_dust: torch.Tensor  # (B, M) specialists' dustbin probabilities
    act: torch.Tensor  # (B, M) bool, specialist m takes part for the example
    idx: torch.Tensor  # (K,) long, the class of each inside bin
    seg: torch.Tensor  # (K,) long, the specialist of each inside bin
    out: torch.Tensor  # (C, M) float64, 1 where class i is in specialist m's dustbin

    def rows(self, sel: torch.Tensor) -> _Problem:
        return _Problem(self.p_g[sel], self.p_in[sel], self.p_dust[sel], self.act[sel],
                        self.idx, self.seg, self.out)


def _stack(p_g: torch.Tensor, p_ms: list[torch.Tensor], subsets: list[list[int]],
           act: torch.Tensor) -> _Problem:
    """Build a float64 :class:`_Problem`, each distribution renormalised to sum 1 exactly."""
    dev = p_g.device
    c = p_g.shape[1]
    p_g = p_g.double() / p_g.double().sum(1, keepdim=True)
    p_ms = [p.double() / p.double().sum(1, keepdim=True) for p in p_ms]
    idx = torch.tensor([i for s in subsets for i in s], dtype=torch.long, device=dev)
    seg = torch.tensor([m for m, s in enumerate(subsets) for _ in s], dtype=torch.long,
                       device=dev)
    out = torch.ones(c, len(subsets), dtype=torch.float64, device=dev)
    out[idx, seg] = 0.0
    p_in = torch.cat([p[:, :-1] for p in p_ms], dim=1)  # (B, K)
    p_dust = torch.stack([p[:, -1] for p in p_ms], dim=1)  # (B, M)
    return _Problem(p_g, p_in, p_dust, act, idx, seg, out)


def _prepare(generalist_probs: torch.Tensor, specialist_probs: Sequence[torch.Tensor],
             subsets: Sequence[Sequence[int]]
             ) -> tuple[torch.Tensor, list[torch.Tensor], list[list[int]]]:
    """Validate inputs; return (p_g, [p_m], subsets) with the probabilities unchanged."""
    p_g = _check_probs(generalist_probs, "generalist_probs", (None, None))
    b, c = p_g.shape
    subsets = validate_subsets(subsets, c)
    if isinstance(specialist_probs, torch.Tensor):
        if specialist_probs.ndim != 3:
            raise ValueError(
                "specialist_probs must be a list of (B, |S_m|+1) tensors or an (M, B, K) "
                f"tensor, got shape {tuple(specialist_probs.shape)}"
            )
        specialist_probs = list(specialist_probs.unbind(0))
    if not isinstance(specialist_probs, Sequence):
        raise ValueError(
            f"specialist_probs is {type(specialist_probs).__name__}, expected a list of tensors"
        )
    if len(specialist_probs) != len(subsets):
        raise ValueError(
            f"got {len(specialist_probs)} specialist outputs for {len(subsets)} subsets; "
            "need one per subset"
        )
    p_ms = [
        _check_probs(p, f"specialist_probs[{m}]", (b, len(s) + 1))
        for m, (p, s) in enumerate(zip(specialist_probs, subsets, strict=True))
    ]
    return p_g, p_ms, subsets


def _check_top_n(top_n: int | None) -> int | None:
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, numbers.Integral) or top_n < 1:
        raise ValueError(f"top_n is {top_n!r}, expected a positive int or None (all)")
    return int(top_n)


def active_specialists(generalist_probs: torch.Tensor, subsets: Sequence[Sequence[int]],
                       top_n: int | None = 1) -> torch.Tensor:
    """Which specialists take part for each example.

    Specialist m is active for an example when S_m contains at least one of
    the generalist's ``top_n`` most probable classes (ties between equal
    probabilities go to the smaller class index).

    Args:
        generalist_probs: (B, C) generalist probabilities (logits work too: only
            their order is used).
        subsets: M subsets of class indices.
        top_n: how many of the generalist's top classes to look at; a value
            >= C, or None, makes every specialist active.

    Returns:
        (B, M) bool tensor.
    """
    if not isinstance(generalist_probs, torch.Tensor) or generalist_probs.ndim != 2:
        raise ValueError("generalist_probs must be a (B, C) tensor")
    b, c = generalist_probs.shape
    subsets = validate_subsets(subsets, c)
    top_n = _check_top_n(top_n)
    device = generalist_probs.device
    if top_n is None or top_n >= c:
        return torch.ones(b, len(subsets), dtype=torch.bool, device=device)
    # A stable descending sort keeps the smaller index first among ties (topk does not promise).
    order = torch.sort(generalist_probs, dim=1, descending=True, stable=True).indices
    top = torch.zeros(b, c, dtype=torch.bool, device=device)
    top.scatter_(1, order[:, :top_n], True)  # (B, C)
    member = torch.zeros(len(subsets), c, dtype=torch.bool, device=device)
    for m, s in enumerate(subsets):
        member[m, torch.tensor(s, device=device)] = True  # (M, C)
    return (top[:, None, :] & member[None, :, :]).any(-1)  # (B, M)


def _masses(q: torch.Tensor, P: _Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """A_m q for every specialist: inside masses (B, K) and dustbin masses (B, M)."""
    # The dustbin is summed over its classes (a matmul), not taken as 1 - inside:
    # a tiny dustbin would lose all its digits to cancellation.
    return q[:, P.idx], q @ P.out


def _ratio(p: torch.Tensor, mass: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``p / mass`` where active and p > 0; 0 elsewhere; inf for p > 0 on an empty bin."""
    safe = torch.where(mass > 0, mass, 1.0)
    r = torch.where(mass > 0, p / safe, torch.inf)
    return torch.where(act & (p > 0), r, 0.0)


def _spec_grad(q: torch.Tensor, P: _Problem) -> torch.Tensor:
    """(B, C) ``sum_{m active} p_m[bin_m(i)] / (A_m q)[bin_m(i)]``; inf marks an infeasible row."""
    inside, dust = _masses(q, P)
    r_in = _ratio(P.p_in, inside, P.act[:, P.seg])  # (B, K)
    r_dust = _ratio(P.p_dust, dust, P.act)  # (B, M)
    bad = torch.isinf(r_in).any(1) | torch.isinf(r_dust).any(1)  # (B,)
    g = torch.where(bad[:, None], 0.0, r_dust) @ P.out.T  # (B, C) dustbin ratios
    g = g.index_add(1, P.idx, torch.where(bad[:, None], 0.0, r_in))
    return torch.where(bad[:, None], torch.inf, g)


def _em(q: torch.Tensor, P: _Problem) -> torch.Tensor:
    """One EM step for a batch (float64); rows stay on the simplex."""
    # The generalist's bins are single classes: its term is q_i * p_g,i / q_i = p_g,i.
    num = P.p_g + torch.where(q > 0, q * _spec_grad(q, P), 0.0)  # a class at 0 stays at 0
    return num / num.sum(1, keepdim=True)  # the sum is 1 + M_active in exact arithmetic


def _cross_entropy(q: torch.Tensor, P: _Problem) -> torch.Tensor:
    """f(q) minus its q-independent entropy terms: (B,) float64 (differentiable in q)."""
    inside, dust = _masses(q, P)
    f = -torch.special.xlogy(P.p_g, q).sum(1)
    f = f - torch.where(P.act[:, P.seg], torch.special.xlogy(P.p_in, inside), 0.0).sum(1)
    return f - torch.where(P.act, torch.special.xlogy(P.p_dust, dust), 0.0).sum(1)


def _gap(q: torch.Tensor, P: _Problem) -> torch.Tensor:
    """(B,) Frank-Wolfe gap ``max_i g_i - q . g`` with ``g = -grad f``: bounds f(q) - min f."""
    g = _spec_grad(q, P) + torch.where(P.p_g > 0, P.p_g / torch.where(q > 0, q, 1.0), 0.0)
    g = torch.where((P.p_g > 0) & (q == 0), torch.inf, g)
    top = g.max(1).values
    gap = top - torch.where(q > 0, q * g, 0.0).sum(1)
    return torch.where(torch.isinf(top), torch.inf, gap)


def _check_active(active: object, b: int, m: int) -> torch.Tensor:
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
        raise ValueError("active must be a bool tensor (B, M)")
    if tuple(active.shape) != (b, m):
        raise ValueError(f"active has shape {tuple(active.shape)}, expected {(b, m)}")
    return active


def _check_q(q: object, shape: tuple[int, int]) -> torch.Tensor:
    if not isinstance(q, torch.Tensor) or tuple(q.shape) != shape:
        raise ValueError(f"q must be a tensor of shape {shape}")
    if not q.is_floating_point() or not torch.isfinite(q).all() or (q < 0).any():
        raise ValueError("q must hold finite non-negative probabilities")
    return q.double()


def em_update(q: torch.Tensor, generalist_probs: torch.Tensor,
              specialist_probs: Sequence[torch.Tensor], subsets: Sequence[Sequence[int]],
              active: torch.Tensor) -> torch.Tensor:
    """One plain EM step of the combination problem.

    Exposed so that the monotone descent of :func:`combination_objective` can
    be checked; :func:`combine_predictions` is what to use for predictions.

    Args:
        q: (B, C) current distributions (positive wherever the optimum may be).
        generalist_probs, specialist_probs, subsets: as in :func:`combine_predictions`.
        active: (B, M) bool, which specialists take part per example.

    Returns:
        (B, C) float64, the updated q.
    """
    p_g, p_ms, subsets = _prepare(generalist_probs, specialist_probs, subsets)
    act = _check_active(active, p_g.shape[0], len(subsets))
    q = _check_q(q, tuple(p_g.shape))
    return _em(q, _stack(p_g, p_ms, subsets, act))


def combination_objective(q: torch.Tensor, generalist_probs: torch.Tensor,
                          specialist_probs: Sequence[torch.Tensor],
                          subsets: Sequence[Sequence[int]], active: torch.Tensor) -> torch.Tensor:
    """``KL(p_g || q) + sum_{m active} KL(p_m || A_m q)`` per example, in nats.

    Terms with zero target probability count 0 (0 log 0 = 0); a positive
    target probability on a bin where q has no mass gives +inf. The inputs
    are used as given (not renormalised).

    Args:
        q: (B, C) non-negative candidate distributions.
        generalist_probs: (B, C) generalist probabilities p_g.
        specialist_probs: M tensors, the m-th (B, |S_m| + 1): p_m over S_m then the dustbin.
        subsets: the M subsets S_m.
        active: (B, M) bool, which specialists take part per example.

    Returns:
        (B,) float64 tensor.
    """
    p_g, p_ms, subsets = _prepare(generalist_probs, specialist_probs, subsets)
    act = _check_active(active, p_g.shape[0], len(subsets))
    q = _check_q(q, tuple(p_g.shape))
    p_g = p_g.double()
    kl = torch.special.xlogy(p_g, p_g).sum(1) - torch.special.xlogy(p_g, q).sum(1)
    for m, (p_m, s) in enumerate(zip(p_ms, subsets, strict=True)):
        p_m = p_m.double()
        aq = fold_probs(q, s)  # (B, |S_m| + 1)
        term = (torch.special.xlogy(p_m, p_m) - torch.special.xlogy(p_m, aq)).sum(1)
        kl = kl + torch.where(act[:, m], term, 0.0)
    return kl


def _initial(P: _Problem) -> torch.Tensor:
    """Starting q: p_g itself, with a little mass where p_g is 0 but a specialist is not.

    Starting at p_g makes agreeing specialists a fixed point at once. The fill
    is the EM step from the uniform distribution (each model's bin mass spread
    evenly over the bin's classes), which is positive wherever any model puts
    mass -- the only classes the optimum can use.
    """
    n_out = P.out.sum(0)  # (M,) classes in each dustbin
    spread = P.p_g + torch.where(P.act, P.p_dust / n_out, 0.0) @ P.out.T
    spread = spread.index_add(1, P.idx, torch.where(P.act[:, P.seg], P.p_in, 0.0))
    q = torch.where(P.p_g > 0, P.p_g, _ZERO_FILL * spread)
    return q / q.sum(1, keepdim=True)


def _squarem_step(q0: torch.Tensor, P: _Problem) -> torch.Tensor:
    """One safeguarded SQUAREM cycle (3 EM steps); never worse than two plain EM steps."""
    q1 = _em(q0, P)
    q2 = _em(q1, P)
    r = q1 - q0
    v = q2 - q1 - r
    rn, vn = r.norm(dim=1, keepdim=True), v.norm(dim=1, keepdim=True)
    alpha = torch.where(vn > 0, -rn / torch.where(vn > 0, vn, 1.0), -1.0).clamp(max=-1.0)
    for _ in range(_BACKTRACKS):
        qa = q0 - 2 * alpha * r + alpha**2 * v
        # Leaving the simplex, or zeroing a class EM keeps positive, is not allowed: a class
        # at exactly 0 could never come back.
        bad = ((qa < 0) | ((qa <= 0) & (q2 > 0))).any(1, keepdim=True)
        if not bad.any():
            break
        alpha = torch.where(bad, (alpha - 1) / 2, alpha)  # alpha = -1 gives q2 exactly
    qa = torch.where(bad, q2, qa)
    qa = qa / qa.sum(1, keepdim=True)
    q3 = _em(qa, P)
    better = _cross_entropy(q3, P) <= _cross_entropy(q2, P)
    return torch.where(better[:, None], q3, q2)


def _check_positive(value: object, name: str, integral: bool) -> None:
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "int" if integral else "number"
        raise ValueError(f"{name} is {value!r}, expected a positive {what}")


def combine_predictions(generalist_probs: torch.Tensor, specialist_probs: Sequence[torch.Tensor],
                        subsets: Sequence[Sequence[int]], *, top_n: int | None = 1,
                        max_iter: int = 1000, tol: float = 1e-10,
                        accelerate: bool = True) -> torch.Tensor:
    """Combine generalist and specialists: the exact minimiser of the combination objective.

    Vectorised over the batch and the specialists. Each example stops as soon
    as its certified bound on ``f(q) - min f`` is below ``tol``; converged
    examples leave the working set, so a batch gives the same answers as its
    examples one at a time.

    Args:
        generalist_probs: (B, C) generalist probabilities p_g.
        specialist_probs: M tensors, the m-th (B, |S_m| + 1): p_m over S_m in
            subset order, then the dustbin (e.g. ``softmax`` of a specialist's
            logits after the dustbin correction).
        subsets: the M subsets S_m (validated by ``validate_subsets``).
        top_n: specialists whose subset meets the generalist's top_n classes
            are active (see :func:`active_specialists`); None: all.
        max_iter: most SQUAREM cycles (or EM steps when ``accelerate=False``);
            examples still above ``tol`` then get a RuntimeWarning.
        tol: stop when the bound on the objective's excess (nats) is below this.
        accelerate: SQUAREM acceleration; False runs plain EM (slow; for checks).

    Returns:
        (B, C) distributions in the dtype of ``generalist_probs``; rows with no
        active specialist are ``generalist_probs`` unchanged.
    """
    p_g, p_ms, subsets = _prepare(generalist_probs, specialist_probs, subsets)
    _check_positive(max_iter, "max_iter", True)
    _check_positive(tol, "tol", False)
    act = active_specialists(p_g, subsets, top_n)  # (B, M)
    # float64 throughout: the fixed point is sensitive to rounding when bins hold tiny mass.
    problem = _stack(p_g, p_ms, subsets, act)
    out = problem.p_g.clone()
    live = torch.nonzero(act.any(1)).squeeze(1)  # rows with something to combine
    step = _squarem_step if accelerate else _em
    P = problem.rows(live)
    q = _initial(P)
    for _ in range(max_iter + 1):
        done = _gap(q, P) <= tol
        out[live[done]] = q[done]
        live, q = live[~done], q[~done]
        if live.numel() == 0:
            break
        P = P.rows(~done)
        q = step(q, P)
    if live.numel():
        out[live] = q
        warnings.warn(
            f"combine_predictions: {live.numel()} example(s) did not reach tol={tol:g} in "
            f"{max_iter} iterations; returning the last iterate",
            RuntimeWarning, stacklevel=2,
        )
    result = out.to(p_g.dtype)
    none_active = ~act.any(1)
    result[none_active] = p_g[none_active]  # exactly p_g, not a float64 round trip
    return result


def combine_gradient_descent(generalist_probs: torch.Tensor,
                             specialist_probs: Sequence[torch.Tensor],
                             subsets: Sequence[Sequence[int]], *, top_n: int | None = 1,
                             steps: int = 300, lr: float = 0.1) -> torch.Tensor:
    """The paper's combination: gradient descent on the logits of q, one example at a time.

    A faithful baseline for benchmarks (slow by design): per example, logits
    ``z`` start at ``log p_g`` and Adam minimises ``f(softmax(z))`` for
    ``steps`` steps with a cosine-decayed learning rate. Use
    :func:`combine_predictions` for real work.

    Args:
        generalist_probs, specialist_probs, subsets, top_n: as in :func:`combine_predictions`.
        steps: Adam steps per example.
        lr: initial Adam learning rate (logit units per step).

    Returns:
        (B, C) distributions in the dtype of ``generalist_probs``; rows with no
        active specialist are ``generalist_probs`` unchanged.
    """
    p_g, p_ms, subsets = _prepare(generalist_probs, specialist_probs, subsets)
    _check_positive(steps, "steps", True)
    _check_positive(lr, "lr", False)
    act = active_specialists(p_g, subsets, top_n)
    problem = _stack(p_g, p_ms, subsets, act)
    result = p_g.clone()
    for i in torch.nonzero(act.any(1)).squeeze(1).tolist():
        row = problem.rows(slice(i, i + 1))
        # log(0) would give -inf logits and NaN gradients; 1e-12 is far below any
        # probability that matters.
        z = row.p_g.clamp_min(1e-12).log().requires_grad_(True)  # (1, C)
        opt = torch.optim.Adam([z], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for _ in range(steps):
            opt.zero_grad()
            _cross_entropy(torch.softmax(z, dim=1), row).sum().backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            result[i] = torch.softmax(z, dim=1)[0].to(p_g.dtype)
    return result
