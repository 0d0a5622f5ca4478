"""Small shared fixtures for the core tests: seeded toy data and the embedded digits."""

from __future__ import annotations

import pytest
import torch

from ensemble_kd.data import Splits, load_dataset


def pytest_configure(config):
    # The models under test are tiny: a second intra-op thread only adds synchronisation, and on a
    # loaded 2-core machine it made a 15-epoch digits run 2-10x slower (2 s -> 5-25 s).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Splits:
    """scikit-learn's 8x8 digits, (N, 1, 8, 8) in [0, 1]; loaded once (sklearn imports slowly)."""
    return load_dataset("digits", seed=0)


def make_blobs(n: int = 240, dim: int = 6, n_classes: int = 3, seed: int = 0):
    """Well separated Gaussian blobs: an easy problem for a tiny model.

    Returns:
        x (n, dim) float32, y (n,) int64 (balanced).
    """
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(n_classes, dim, generator=g)  # (C, D)
    y = torch.arange(n) % n_classes  # (n,)
    x = means[y] + torch.randn(n, dim, generator=g)  # (n, D)
    return x.float(), y.long()


@pytest.fixture
def blobs():
    """(x_train, y_train, x_val, y_val) of 3 easy blob classes in 6 dimensions."""
    x, y = make_blobs(n=300, seed=0)
    return x[:240], y[:240], x[240:], y[240:]
