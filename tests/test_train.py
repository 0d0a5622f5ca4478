"""The shared training loop: learning, reproducibility, checkpoints and resume, early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ensemble_kd.batching import TensorBatches
from ensemble_kd.io import read_jsonl
from ensemble_kd.losses import LossParts
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits
from ensemble_kd.train import TrainConfig, evaluate_logits, train


class Interrupt(Exception):
    """Raised from on_epoch_end to simulate a run killed after an epoch."""


def _noise_problem():
    """Random inputs with random labels: a model can only overfit, so validation NLL is best at
    epoch 1 and early stopping (patience 3) ends a 10-epoch run after epoch 4."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)
    xv, yv = torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)
    return x, y, xv, yv


def _run(
    data,
    run_dir=None,
    *,
    interrupt_after: int | None = None,
    dropout: float = 0.0,
    widths=(16,),
    model_seed: int = 0,
    **cfg,
):
    x, y, xv, yv = data
    torch.manual_seed(model_seed)  # initial weights
    model = build_model("mlp", tuple(x.shape[1:]), 3, widths=list(widths), dropout=dropout)
    config = TrainConfig(**{"epochs": 5, "batch_size": 16, "lr": 0.01, **cfg})
    seen = []

    def on_epoch_end(record):
        seen.append(record["epoch"])
        if interrupt_after is not None and record["epoch"] == interrupt_after:
            raise Interrupt

    result = train(
        model,
        TensorBatches(x, y, batch_size=config.batch_size),
        config,
        val=(xv, yv),
        run_dir=run_dir,
        progress=False,
        on_epoch_end=on_epoch_end,
    )
    return result, seen


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# --------------------------------------------------------------------------- learning


def test_loss_decreases_on_an_easy_problem(blobs):
    result, seen = _run(blobs, epochs=6)
    losses = [r["loss"] for r in result.history]
    assert seen == [1, 2, 3, 4, 5, 6]
    assert len(result.history) == 6 and result.best_epoch == 6
    assert losses[-1] < 0.25 * losses[0]
    assert result.history[-1]["val_acc"] >= 0.95
    assert not result.model.training  # returned in eval mode
    # the record's hard part is the loss itself for plain cross-entropy training
    assert result.history[-1]["hard"] == pytest.approx(result.history[-1]["loss"])
    assert result.history[-1]["soft"] == 0.0


def test_cosine_schedule_reaches_zero_and_sgd_works(blobs):
    result, _ = _run(blobs, epochs=3, optimizer="sgd", lr=0.05, schedule="cosine")
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert result.history[-1]["val_acc"] >= 0.9
    constant, _ = _run(blobs, epochs=2, schedule="constant")
    assert [r["lr"] for r in constant.history] == [0.01, 0.01]


def test_same_seed_identical_weights_other_seed_different(blobs):
    a, _ = _run(blobs, dropout=0.3, seed=1)
    b, _ = _run(blobs, dropout=0.3, seed=1)
    c, _ = _run(blobs, dropout=0.3, seed=2)  # other shuffling and dropout, same initial weights
    assert _same_weights(a.model, b.model)
    assert not _same_weights(a.model, c.model)


def test_diverging_loss_raises():
    def nan_objective(logits, batch):
        loss = logits.sum() * math.nan
        return LossParts(loss, loss, None)

    x, y = torch.randn(8, 3), torch.arange(8) % 2
    with pytest.raises(FloatingPointError, match="diverged in epoch 1"):
        train(
            build_model("mlp", (3,), 2, widths=[4]),
            TensorBatches(x, y, batch_size=4),
            TrainConfig(epochs=2),
            objective=nan_objective,
            progress=False,
        )


def test_unlabelled_batches_with_default_objective():
    with pytest.raises(ValueError, match="labelled"):
        train(
            build_model("mlp", (3,), 2, widths=[4]),
            TensorBatches(torch.randn(8, 3), None, batch_size=4),
            TrainConfig(epochs=1),
            progress=False,
        )


@pytest.mark.parametrize(
    "cfg, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(lr=0.0), "lr"),
        (dict(lr=math.inf), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(schedule="linear"), "schedule"),
        (dict(early_stopping=-1), "early_stopping"),
    ],
)
def test_bad_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**cfg).validate()


def test_early_stopping_needs_validation_data():
    with pytest.raises(ValueError, match="validation"):
        train(
            build_model("mlp", (3,), 2, widths=[4]),
            TensorBatches(torch.randn(8, 3), torch.arange(8) % 2, batch_size=4),
            TrainConfig(epochs=2, early_stopping=1),
            progress=False,
        )


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_returns_the_best_epoch():
    data = _noise_problem()
    result, seen = _run(data, widths=(64,), epochs=10, early_stopping=3)
    nll = [r["val_nll"] for r in result.history]
    best = 1 + min(range(len(nll)), key=nll.__getitem__)
    # stopped after `patience` epochs without improvement, well before the last epoch
    assert len(result.history) == best + 3 < 10
    assert seen == list(range(1, best + 4))
    assert result.history[-1].get("stopped") is True
    assert result.best_epoch == best
    # the returned weights are those of the best epoch, not the last
    got = evaluate_logits(predict_logits(result.model, data[2]), data[3])
    assert got["nll"] == pytest.approx(nll[best - 1], rel=1e-6)
    assert got["nll"] != pytest.approx(nll[-1], rel=1e-6)


# --------------------------------------------------------------------------- checkpoints and resume


@pytest.mark.parametrize(
    "kind",
    ["plain", "dropout", "early_stopping"],
)
def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, kind):
    if kind == "early_stopping":
        data, kw = _noise_problem(), dict(widths=(64,), epochs=10, early_stopping=3)
    else:
        data, kw = _noise_problem(), dict(epochs=5)
        if kind == "dropout":
            kw["dropout"] = 0.5
    full, _ = _run(data, tmp_path / "full", **kw)

    with pytest.raises(Interrupt):
        _run(data, tmp_path / "resumed", interrupt_after=2, **kw)
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    assert len(read_jsonl(tmp_path / "resumed" / "metrics.jsonl")) == 2
    # a fresh model with the same seed; the checkpoint must supply weights and optimizer state
    resumed, seen = _run(data, tmp_path / "resumed", **kw)

    assert seen[0] == 3  # epochs 1 and 2 were not repeated
    assert _same_weights(full.model, resumed.model)
    assert resumed.best_epoch == full.best_epoch
    assert _without_time(resumed.history) == _without_time(full.history)
    if kind == "early_stopping":
        # the best epoch came before the interruption: its weights travelled in the checkpoint
        assert resumed.best_epoch <= 2 < len(resumed.history)
    log = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["epoch"] for r in log] == list(range(1, len(full.history) + 1))
    assert _without_time(log) == _without_time(resumed.history)


def test_uninterrupted_run_with_run_dir_equals_run_without(tmp_path, blobs):
    a, _ = _run(blobs, tmp_path / "a", epochs=3)
    b, _ = _run(blobs, None, epochs=3)
    assert _same_weights(a.model, b.model)
    log = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_resume_rewrites_a_log_line_whose_checkpoint_never_landed(tmp_path):
    data = _noise_problem()
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        _run(data, run_dir, interrupt_after=2)
    with open(run_dir / "metrics.jsonl", "a") as f:  # epoch 3 logged, then killed
        f.write(json.dumps({"epoch": 3, "loss": 123.0}) + "\n")
        f.write('{"epoch": 4, "lo')  # and a torn line
    result, _ = _run(data, run_dir)
    log = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    assert log[2]["loss"] != 123.0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 5


def test_finished_run_is_returned_without_training_again(tmp_path, blobs):
    first, _ = _run(blobs, tmp_path / "run", epochs=3)
    again, seen = _run(blobs, tmp_path / "run", epochs=3, model_seed=7)
    assert seen == []
    assert _same_weights(first.model, again.model)
    assert len(again.history) == 3 and again.best_epoch == 3


def test_finished_early_stopped_run_returns_best_weights_again(tmp_path):
    data = _noise_problem()
    kw = dict(widths=(64,), epochs=10, early_stopping=3)
    first, _ = _run(data, tmp_path / "run", **kw)
    again, seen = _run(data, tmp_path / "run", **kw)
    assert seen == []
    assert again.best_epoch == first.best_epoch < len(again.history)
    assert _same_weights(first.model, again.model)


@pytest.mark.parametrize("change", [dict(lr=0.02), dict(seed=5), dict(epochs=6)])
def test_checkpoint_from_other_settings_refuses_to_resume(tmp_path, blobs, change):
    with pytest.raises(Interrupt):
        _run(blobs, tmp_path / "run", interrupt_after=1)
    with pytest.raises(ValueError, match="other settings"):
        _run(blobs, tmp_path / "run", **change)


def test_checkpoint_with_other_extra_state_refuses_to_resume(tmp_path):
    x, y = torch.randn(8, 3), torch.arange(8) % 2

    def go(extra):
        train(
            build_model("mlp", (3,), 2, widths=[4]),
            TensorBatches(x, y, batch_size=4),
            TrainConfig(epochs=1),
            run_dir=tmp_path,
            extra_state=extra,
            progress=False,
        )

    go({"data": "a"})
    go({"data": "a"})  # same facts: resumes (here: already finished)
    with pytest.raises(ValueError, match="other settings"):
        go({"data": "b"})


def test_stale_log_without_checkpoint_is_discarded(tmp_path, blobs):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 9}\n{"epoch": 2, "loss": 9}\n')
    _run(blobs, tmp_path, epochs=2)
    log = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [1, 2] and all(r["loss"] != 9 for r in log)


def test_epoch_sums_are_example_weighted_means_per_member():
    # the loop's running sums of the logged loss parts: known answers, two members, a short last
    # batch, no hard term (logged as 0), and NaN for an epoch without steps
    from ensemble_kd.losses import LossParts
    from ensemble_kd.train import _EpochSums

    sums = _EpochSums(2)
    sums.add(LossParts(torch.tensor([1.0, 10.0]), torch.tensor([2.0, 20.0]), None), 6)
    sums.add(LossParts(torch.tensor([3.0, 30.0]), torch.tensor([4.0, 40.0]), None), 2)
    means = sums.means(reduce=False)
    assert [v for row in means for v in row] == pytest.approx([1.5, 2.5, 0.0, 15.0, 25.0, 0.0])
    one = _EpochSums(1)
    one.add(LossParts(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(5.0)), 3)
    one.add(LossParts(torch.tensor(4.0), torch.tensor(3.0), torch.tensor(1.0)), 1)
    assert one.means(reduce=False)[0] == pytest.approx([2.5, 1.5, 4.0])
    empty = _EpochSums(1).means(reduce=False)
    assert all(v != v for v in empty[0])  # NaN
