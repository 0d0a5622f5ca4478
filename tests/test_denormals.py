"""Subnormal floats: training flushes them, and restores the caller's mode afterwards.

Adam's first moment of a weight whose gradient has become zero shrinks by beta1 = 0.9 per step,
reaching the subnormal range (below 1.2e-38 in float32) after roughly 800 steps and staying
there for about 150 more; on x86 CPUs arithmetic on such numbers is many times slower.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch import nn

from ensemble_kd.batching import Batch
from ensemble_kd.cli.main import main as cli_main
from ensemble_kd.train import (
    TrainConfig,
    default_objective,
    flush_denormals,
    flushing_denormals,
    train,
)

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False),
                                reason="this CPU cannot flush subnormal floats")

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32, 1.18e-38


@pytest.fixture(autouse=True)
def _normal_mode():
    """Each test starts with flushing off and leaves it as the suite found it."""
    before = flushing_denormals()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(before)


class OneLiveBatch:
    """A batch source whose feature 0 is nonzero in the first batch of an epoch only, so the
    weights reading it get one gradient and then none: their Adam moments decay geometrically."""

    def __init__(self, steps: int, features: int = 6, classes: int = 3, size: int = 8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(steps, size, features, generator=g)
        self.x[1:, :, 0] = 0.0
        self.x[0, :, 0] *= torch.logspace(-3, 3, size)  # spread the moments' magnitudes
        self.y = torch.randint(0, classes, (steps, size), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def epoch(self, generator: torch.Generator):
        for k in range(len(self.x)):
            yield Batch(self.x[k], self.y[k], torch.arange(k * 8, k * 8 + 8))

    def to(self, device):
        return self


def _dead_moments(run_dir, steps: int = 900) -> torch.Tensor:
    """Train a linear model one epoch of ``steps`` Adam steps; the first moments (from the saved
    checkpoint) of the weights that read the dead feature."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    cfg = TrainConfig(epochs=1, lr=1e-3, schedule="constant")
    train(model, OneLiveBatch(steps), cfg, run_dir=run_dir)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state = ckpt["optimizer"]["state"]
    weight_state = next(s for s in state.values() if s["exp_avg"].shape == (3, 6))
    return weight_state["exp_avg"][:, 0]


def _subnormal(t: torch.Tensor) -> torch.Tensor:
    return (t != 0) & (t.abs() < TINY)


def test_training_leaves_no_subnormal_adam_state(tmp_path, monkeypatch):
    m = _dead_moments(tmp_path / "flushed")
    assert not _subnormal(m).any()
    assert (m == 0).any()  # the moments did decay past the normal range, to zero

    # the control: the same run without the flush keeps subnormal moments (so the check above
    # can fail); CPU arithmetic on them is what made epochs slow
    monkeypatch.setattr(sys.modules["ensemble_kd.train"], "flush_denormals",
                        contextlib.nullcontext)
    m = _dead_moments(tmp_path / "control")
    assert _subnormal(m).any()


def test_training_flushes_inside_and_restores_the_callers_mode(monkeypatch):
    seen = []

    def objective(logits, batch):
        seen.append(flushing_denormals())
        return default_objective(logits, batch)

    torch.manual_seed(0)
    assert not flushing_denormals()
    train(nn.Linear(6, 3), OneLiveBatch(5), TrainConfig(epochs=2), objective=objective)
    assert seen == [True] * 10
    assert not flushing_denormals()  # restored

    torch.set_flush_denormal(True)  # a caller who flushes already keeps flushing
    train(nn.Linear(6, 3), OneLiveBatch(5), TrainConfig(epochs=1), objective=objective)
    assert flushing_denormals()


def test_context_manager_nests_and_restores():
    with flush_denormals() as supported:
        assert supported and flushing_denormals()
        with flush_denormals():
            assert flushing_denormals()
        assert flushing_denormals()  # the inner one found it on and left it on
    assert not flushing_denormals()


def test_the_command_line_flushes_in_every_thread_it_starts_and_restores(monkeypatch, tmp_path):
    # the command flushes around its whole run, so that threads it starts (torch's worker pool)
    # inherit the mode; an in-process caller (this test process, Hypothesis's subnormal floats)
    # gets its own mode back
    import threading

    cli = sys.modules["ensemble_kd.cli.main"]  # the module (the package exports the function)
    seen = {}

    def dispatch(args, cfg):
        seen["main"] = flushing_denormals()
        worker = threading.Thread(target=lambda: seen.__setitem__("worker", flushing_denormals()))
        worker.start()
        worker.join()
        return 0

    monkeypatch.setattr(cli, "dispatch", dispatch)
    assert not flushing_denormals()
    assert cli_main(["run", "--dataset", "digits", "--out", str(tmp_path / "run")]) == 0
    assert seen == {"main": True, "worker": True}
    assert not flushing_denormals()
