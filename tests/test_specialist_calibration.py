"""The dustbin correction, tested by calibration on a problem whose posterior is known exactly.

Three 2-D Gaussian classes with identity covariance: the Bayes posterior is a softmax of linear
functions, so a linear model (``mlp`` with no hidden layer) represents it exactly, both over the
three classes and folded into subset {0, 1} + dustbin (the dustbin is class 2 alone). Classes 0 and
1 hold 5% of the data each, so the dustbin's natural share is 0.90; the specialist trains on a
50/50 mix. A calibrated specialist's mean p(dustbin) on natural data must come back to 0.90.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from ensemble_kd.data import Splits
from ensemble_kd.models import build_model
from ensemble_kd.train import TrainConfig
from specialists.calibration import dustbin_log_correction, fit_dustbin_correction
from specialists.subsets import specialist_targets
from specialists.training import SpecialistConfig, train_specialist

MEANS = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.8]], dtype=torch.float64)  # (3, 2)
PRIOR = torch.tensor([0.05, 0.05, 0.90], dtype=torch.float64)
SUBSET = [0, 1]
NATURAL_DUSTBIN = 0.90


def _sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly PRIOR * n examples of each class (so every split holds the natural shares)."""
    counts = (PRIOR * n).round().long()
    y = torch.cat([torch.full((int(k),), c) for c, k in enumerate(counts)])  # (n,)
    x = MEANS[y] + torch.randn(len(y), 2, generator=g, dtype=torch.float64)  # (n, 2)
    return x.float(), y


@pytest.fixture(scope="module")
def gauss() -> Splits:
    g = torch.Generator().manual_seed(0)
    parts = [_sample(n, g) for n in (20_000, 4_000, 20_000)]
    return Splits("gauss", *(t for part in parts for t in part), ["a", "b", "c"])


@pytest.fixture(scope="module")
def bayes():
    """The generalist is the exact posterior: logit_c = mu_c . x - |mu_c|^2 / 2 + log pi_c."""
    model = build_model("mlp", (2,), 3, widths=[])
    with torch.no_grad():
        model.head.weight.copy_(MEANS)
        model.head.bias.copy_(-(MEANS**2).sum(1) / 2 + PRIOR.log())
    return model.eval()


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.double(), targets))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_corrected_specialist_is_calibrated_on_natural_data(gauss, bayes, alpha):
    torch.manual_seed(0)
    sp = train_specialist(
        bayes, SUBSET, gauss, TrainConfig(epochs=5, batch_size=128, lr=0.05),
        SpecialistConfig(share=0.5, alpha=alpha), progress=False,
    )
    t = specialist_targets(gauss.y_test, SUBSET)  # (N,)
    with torch.no_grad():
        z = sp.model(gauss.x_test).double()  # (N, 3), correction included
    raw = z.clone()
    raw[:, -1] -= sp.dustbin_correction  # the specialist as trained, for the mix
    p_dust = float(z.softmax(1)[:, -1].mean())
    assert abs(p_dust - NATURAL_DUSTBIN) <= 0.02
    assert float(raw.softmax(1)[:, -1].mean()) < NATURAL_DUSTBIN - 0.05  # there was a shift
    assert _nll(z, t) < _nll(raw, t)
    # the known posterior is the floor; a calibrated linear specialist comes close to it
    with torch.no_grad():
        exact = bayes(gauss.x_test).double()  # the dustbin is class 2 alone: same 3 columns
    assert _nll(z, t) <= _nll(exact, t) + 0.005
    if alpha == 0:
        assert sp.calibration == "prior_shift"
        assert sp.dustbin_correction == pytest.approx(math.log(9.0))
    else:
        # soft targets carry the natural prior already: the fitted shift is well below log 9
        assert sp.calibration == "fitted_on_validation"
        assert 0.0 < sp.dustbin_correction < math.log(9.0) - 0.5


def test_closed_form_known_answers():
    # a subset with 10% of the data on a 50/50 mix: log(0.9 / 0.5) + log(0.5 / 0.1) = log 9
    assert dustbin_log_correction(0.9, 0.5) == pytest.approx(math.log(9.0))
    assert dustbin_log_correction(0.8, 0.5) == pytest.approx(math.log(4.0))
    assert dustbin_log_correction(0.5, 0.5) == 0.0
    # a mix that shows the dustbin more often than nature needs a negative shift
    assert dustbin_log_correction(0.5, 0.8) == pytest.approx(-math.log(4.0))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), True])
def test_closed_form_rejects_shares_outside_open_unit_interval(bad):
    with pytest.raises(ValueError, match="natural_dustbin_share"):
        dustbin_log_correction(bad, 0.5)
    with pytest.raises(ValueError, match="training_dustbin_share"):
        dustbin_log_correction(0.5, bad)


def test_fitted_correction_known_answers():
    # two subset logits at 0 and a dustbin logit at 0: p(dustbin) = 1 / 3 before the shift;
    # 3 of 4 targets in the dustbin want sigmoid(b - log 2) = 3/4, i.e. b = log 6
    z = torch.zeros(4, 3)
    assert fit_dustbin_correction(z, torch.tensor([0, 2, 2, 2])) == pytest.approx(math.log(6.0))
    # margins +1 and -1 with one example of each kind: b = 0 by symmetry
    z = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    assert fit_dustbin_correction(z, torch.tensor([1, 0])) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_fitted_correction_minimises_the_nll(seed):
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 4, (50,), generator=g)
    t[:2] = torch.tensor([0, 3])  # both kinds present

    def nll(b: float) -> float:
        shifted = z.clone()
        shifted[:, -1] += b
        return _nll(shifted, t)

    ref = minimize_scalar(nll, bounds=(-30, 30), method="bounded",
                          options={"xatol": 1e-10}).x
    b = fit_dustbin_correction(z, t)
    assert b == pytest.approx(ref, abs=1e-5)
    assert nll(b) <= nll(ref) + 1e-12
    # first-order condition: the mean dustbin probability equals the dustbin's share
    shifted = z.clone()
    shifted[:, -1] += b
    assert float(shifted.softmax(1)[:, -1].mean()) == pytest.approx(float((t == 3).double().mean()))


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (np.array([0, 1, 0]), "no example outside the subset"),
        (np.array([2, 2, 2]), "no example of the subset's classes"),
        (np.array([0, 3, 2]), r"targets must lie in \[0, 2\]"),
        (np.array([0.0, 2.0, 2.0]), "ints"),
    ],
)
def test_fitted_correction_rejects_bad_targets(targets, message):
    with pytest.raises(ValueError, match=message):
        fit_dustbin_correction(np.zeros((3, 3)), targets)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (lambda y: y == 2, r"validation split has no example of subset \[0, 1\]"),
        (lambda y: y != 2, r"validation split has no example outside subset \[0, 1\]"),
    ],
)
def test_calibration_split_without_both_kinds_is_refused_before_training(
    gauss, bayes, tmp_path, keep, message
):
    m = keep(gauss.y_val)
    bad = Splits("gauss", gauss.x_train, gauss.y_train, gauss.x_val[m], gauss.y_val[m],
                 gauss.x_test, gauss.y_test, gauss.class_names)
    with pytest.raises(ValueError, match=message):
        train_specialist(bayes, SUBSET, bad, TrainConfig(epochs=1), SpecialistConfig(alpha=0.5),
                         run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
