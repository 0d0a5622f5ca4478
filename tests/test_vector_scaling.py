"""Vector scaling of a specialist (a temperature and a bias per output fitted on natural held-out
data), tested by what it must achieve: recovering a known distortion of the true logits, the
calibration-in-the-large that holds at the optimum, a lower NLL than any other scale and bias
(an independent optimiser), and calibrated specialists on the known-posterior problem of
``test_specialist_calibration``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from test_specialist_calibration import NATURAL_DUSTBIN, SUBSET, bayes, gauss  # noqa: F401

from ensemble_kd.data import Splits
from ensemble_kd.train import TrainConfig
from specialists import (
    SpecialistConfig,
    calibrate_specialist,
    fit_vector_scaling,
    load_specialist,
    save_specialist,
    specialist_targets,
    train_specialist,
    train_specialists,
)
from specialists.training import VECTOR


def _draw(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits (n, k) and labels drawn from their softmax."""
    g = torch.Generator().manual_seed(seed)
    true = 2.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.multinomial(true.softmax(1), 1, generator=g).squeeze(1)
    return true, y


def _nll(z: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(z.double(), y))


def test_recovers_a_known_temperature_and_dustbin_shift():
    true, y = _draw(40_000, 4, seed=0)
    # an overconfident specialist (T = 1/3) whose dustbin logit is 2 nats too high
    seen = 3.0 * true + torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    a, b = fit_vector_scaling(seen, y)
    assert a == pytest.approx(1 / 3, rel=0.03)
    assert b[-1] == pytest.approx(-2 / 3, abs=0.08)  # a * 2 taken back
    assert np.abs(b[:-1]).max() < 0.08  # the subset's classes were not distorted
    assert abs(b[:-1].mean()) < 1e-12  # the documented normalisation
    # already calibrated logits come back (nearly) unchanged
    a1, b1 = fit_vector_scaling(true, y)
    assert a1 == pytest.approx(1.0, rel=0.03) and np.abs(b1).max() < 0.08


@pytest.mark.parametrize("seed", range(3))
def test_the_fit_is_the_nll_minimum_and_calibrated_in_the_large(seed):
    g = torch.Generator().manual_seed(seed)
    z = 2.5 * torch.randn(300, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (300,), generator=g)
    a, b = fit_vector_scaling(z, y)
    fitted = a * z + torch.as_tensor(b)

    def nll(params: np.ndarray) -> float:  # an independent optimiser of the same objective
        return _nll(params[0] * z + torch.as_tensor(params[1:]), y)

    ref = minimize(nll, np.zeros(4), method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20_000})
    assert _nll(fitted, y) <= ref.fun + 1e-7
    assert _nll(fitted, y) <= _nll(z, y)
    # stationarity in b: the mean probability of each output equals its share of the targets
    share = torch.bincount(y, minlength=3).double() / len(y)
    assert torch.allclose(fitted.softmax(1).mean(0), share, atol=1e-6)


def test_logits_without_signal_and_bad_targets_are_refused():
    true, y = _draw(2_000, 3, seed=1)
    with pytest.raises(ValueError, match="no signal"):
        fit_vector_scaling(-true, y)  # the best scale is negative
    with pytest.raises(ValueError, match="no example outside the subset"):
        fit_vector_scaling(true, torch.zeros(len(y), dtype=torch.long))
    with pytest.raises(ValueError, match="no example of the subset's classes"):
        fit_vector_scaling(true, torch.full((len(y),), 2))


def test_config_names_a_bad_calibration():
    with pytest.raises(ValueError, match="calibration is 'vectors'"):
        SpecialistConfig(calibration="vectors").validate()


def _probs(sp, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sp.model(x).double().softmax(1)


def test_vector_scaled_specialist_is_calibrated_on_natural_data(gauss, bayes):  # noqa: F811
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=5, batch_size=128, lr=0.05)
    auto = train_specialist(bayes, SUBSET, gauss, cfg, SpecialistConfig(), progress=False)
    torch.manual_seed(0)
    vec = train_specialist(bayes, SUBSET, gauss, cfg, SpecialistConfig(calibration="vector"),
                           progress=False)
    assert vec.calibration == VECTOR and vec.temperature > 0
    t = specialist_targets(gauss.y_test, SUBSET)
    p = _probs(vec, gauss.x_test)
    assert abs(float(p[:, -1].mean()) - NATURAL_DUSTBIN) <= 0.02  # held-out test data
    # no worse than the closed-form prior shift, and close to the exact posterior's NLL
    assert _nll(p.log(), t) <= _nll(_probs(auto, gauss.x_test).log(), t) + 0.002
    exact = bayes(gauss.x_test).detach().double()
    assert _nll(p.log(), t) <= _nll(exact, t) + 0.005


def test_calibrating_twice_changes_nothing_and_leaves_the_input_alone(gauss, bayes):  # noqa: F811
    torch.manual_seed(0)
    sp = train_specialist(bayes, SUBSET, gauss, TrainConfig(epochs=2, batch_size=128, lr=0.05),
                          SpecialistConfig(), progress=False)
    before = {k: v.clone() for k, v in sp.model.state_dict().items()}
    once = calibrate_specialist(sp, gauss.x_val, gauss.y_val)
    for k, v in sp.model.state_dict().items():
        assert torch.equal(v, before[k])  # a copy was calibrated
    twice = calibrate_specialist(once, gauss.x_val, gauss.y_val)
    assert twice.temperature == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(_probs(twice, gauss.x_test), _probs(once, gauss.x_test), atol=1e-5)
    # only the head's scale and biases changed: a margin between two outputs is the old one
    # divided by the temperature, plus one constant (the difference of the two new biases)
    with torch.no_grad():
        z0, z1 = sp.model(gauss.x_test).double(), once.model(gauss.x_test).double()
    for i, j in ((0, 1), (0, 2)):
        rest = (z1[:, i] - z1[:, j]) - (z0[:, i] - z0[:, j]) / once.temperature
        assert float(rest.std()) < 1e-4


def test_temperature_is_saved_and_a_finished_folder_is_recalibrated(gauss, bayes, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05)
    [plain] = train_specialists(bayes, [SUBSET], gauss, cfg, SpecialistConfig(), tmp_path,
                                progress=False)
    assert plain.calibration == "prior_shift"
    path = tmp_path / "specialist_0" / "model.pt"
    # asked for vector scaling, the finished specialist is calibrated and saved again
    [vec] = train_specialists(bayes, [SUBSET], gauss, cfg,
                              SpecialistConfig(calibration="vector"), tmp_path, progress=False)
    back = load_specialist(path)
    assert back.calibration == VECTOR and vec.calibration == VECTOR
    assert back.temperature == pytest.approx(vec.temperature) and back.temperature != 1.0
    assert torch.equal(_probs(back, gauss.x_test), _probs(vec, gauss.x_test))
    expected = calibrate_specialist(plain, gauss.x_val, gauss.y_val)
    assert torch.allclose(_probs(back, gauss.x_test), _probs(expected, gauss.x_test), atol=1e-6)
    # asked again: already calibrated, the file is left as it is
    stamp = path.stat().st_mtime_ns, path.read_bytes()
    train_specialists(bayes, [SUBSET], gauss, cfg, SpecialistConfig(calibration="vector"),
                      tmp_path, progress=False)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp
    # a temperature that is not a positive number is a broken file, named
    save_specialist(tmp_path / "bad.pt", back)
    import ensemble_kd.checkpoint as ck
    model, meta = ck.load_model(tmp_path / "bad.pt")
    ck.save_model(tmp_path / "bad.pt", model, {**meta, "calibration_temperature": -1.0})
    from ensemble_kd.io import FormatError
    with pytest.raises(FormatError, match="calibration_temperature"):
        load_specialist(tmp_path / "bad.pt")


def test_vector_scaling_needs_both_kinds_in_the_validation_split(gauss, bayes, tmp_path):  # noqa: F811
    m = gauss.y_val == 2
    bad = Splits("gauss", gauss.x_train, gauss.y_train, gauss.x_val[m], gauss.y_val[m],
                 gauss.x_test, gauss.y_test, gauss.class_names)
    with pytest.raises(ValueError, match=r"no example of subset \[0, 1\].*vector scaling"):
        train_specialist(bayes, SUBSET, bad, TrainConfig(epochs=1),
                         SpecialistConfig(calibration="vector"), run_dir=tmp_path / "run",
                         progress=False)
    assert not (tmp_path / "run").exists()
