"""The weak-signal rule on real data (issue: "enough data to cluster").

Digits: a well-trained student confuses too few validation images, and too little of its
probability mass on the training set, for specialist subsets; the rule must say so. Fashion-MNIST
(when its IDX files are installed): even a briefly trained student confuses enough images, and
the subsets put its most confused pairs together.
"""

import numpy as np
import pytest
import torch

from ensemble_kd.batching import TensorBatches
from ensemble_kd.data import load_dataset
from ensemble_kd.models import mlp
from ensemble_kd.train import TrainConfig, seed_everything, train
from specialists import confusion_matrix, subsets_for_generalist
from specialists.selection import check_signal


def _student(splits, epochs: int, batch_size: int, lr: float):
    seed_everything(0)
    model = mlp(tuple(splits.x_train.shape[1:]), len(splits.class_names), widths=[64])
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=0)
    train(model, TensorBatches(splits.x_train, splits.y_train, batch_size=batch_size), cfg, progress=False)
    model.eval()
    return model


def _signals(splits, model):
    with torch.no_grad():
        val_pred = model(splits.x_val).argmax(1).numpy()
        train_probs = torch.softmax(model(splits.x_train), 1).numpy()
    c = len(splits.class_names)
    counts = confusion_matrix(splits.y_val.numpy(), val_pred, c)
    return counts, train_probs


def test_digits_student_has_too_little_signal_and_no_specialists():
    splits = load_dataset("digits")
    model = _student(splits, epochs=40, batch_size=32, lr=1e-2)
    counts, train_probs = _signals(splits, model)
    assert np.trace(counts) / counts.sum() > 0.93  # a competent student, not a broken one
    assert check_signal(counts).too_weak
    subsets, why = subsets_for_generalist(counts, train_probs=train_probs,
                                          train_labels=splits.y_train.numpy())
    assert subsets == []
    assert why.startswith("no specialists") and "expected confusion on the training set" in why


def test_fashion_mnist_student_has_enough_signal_and_gets_specialists():
    try:
        splits = load_dataset("fashion-mnist")
    except FileNotFoundError as exc:  # the IDX files are an optional apt package
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    model = _student(splits, epochs=1, batch_size=128, lr=1e-3)
    counts, _ = _signals(splits, model)
    check = check_signal(counts, class_names=splits.class_names)
    assert not check.too_weak and check.top_pair_count >= 50
    subsets, why = subsets_for_generalist(counts, class_names=splits.class_names)
    assert subsets and why == "subsets from the validation confusion"
    # the three most confused pairs each share a subset
    both = np.triu(counts + counts.T, k=1)
    for flat in np.argsort(-both, axis=None, kind="stable")[:3]:
        a, b = np.unravel_index(flat, both.shape)
        assert any(a in s and b in s for s in subsets), (a, b, subsets)
