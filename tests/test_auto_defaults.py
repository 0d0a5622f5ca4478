"""The "auto" options: decided from the data once, when a run starts, and recorded resolved.

Digits must resolve to exactly the defaults the README's figures were made with; Fashion-MNIST-shaped
data to the cnn teacher with its recipe and the scaled budgets; a typed flag always wins.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ensemble_kd.cli import main
from ensemble_kd.cli.config import RunConfig
from ensemble_kd.cli.parser import COMMANDS, build_parser, resolve_config
from ensemble_kd.cli.run_record import prepare_out, read_run_record, run_record
from ensemble_kd.train import TrainConfig

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1_0"
FM = ((1, 28, 28), 54_000)  # Fashion-MNIST: input shape, training examples (val split carved off)
# Every option whose default became "auto", with the value it had before (digits and every data
# set): the README's digits figures were measured with these.
TODAY_ON_DIGITS = {
    "teachers": 5, "teacher_arch": "convnet", "teacher_widths": [32, 64], "teacher_dropout": 0.0,
    "teacher_jitter": 1, "teacher_epochs": 30, "epochs": 120, "batch_size": 32,
}  # fmt: skip
NEW_KEYS = ("teacher_batch_size", "teacher_optimizer", "teacher_lr", "teacher_weight_decay")


def _cfg(*flags: str, command: str = "run") -> RunConfig:
    """The config the command line gives, before resolve_auto."""
    args = build_parser().parse_args([command, "--out", "unused", *flags])
    return resolve_config(args, COMMANDS[command][1])


def test_digits_resolves_to_exactly_the_old_defaults(digits):
    assert len(digits.y_train) == 1213 and digits.input_shape == (1, 8, 8)
    cfg = _cfg().resolve_auto(digits.input_shape, len(digits.y_train))
    assert {k: getattr(cfg, k) for k in TODAY_ON_DIGITS} == TODAY_ON_DIGITS
    assert all(getattr(cfg, k) is None for k in NEW_KEYS)  # the teachers use the shared options
    shared = TrainConfig(epochs=120, batch_size=32, optimizer="adam", lr=1e-2, momentum=0.9,
                         weight_decay=0.0, schedule="cosine", early_stopping=0, seed=0)
    assert cfg.train_config() == shared
    assert cfg.teacher_train_config() == dataclasses.replace(shared, epochs=30)
    assert cfg.train_config(cfg.specialist_epochs) == shared
    record = run_record("run", cfg)["config"]  # config.json: what older versions wrote
    assert not set(NEW_KEYS) & set(record)
    assert {k: record[k] for k in TODAY_ON_DIGITS} == TODAY_ON_DIGITS
    assert set(cfg.auto_fields()) == set(NEW_KEYS)  # still None: the shared options


def test_fashion_mnist_gets_the_cnn_recipe_and_the_scaled_budgets():
    cfg = _cfg().resolve_auto(*FM)
    assert cfg.teacher_arch == "cnn" and cfg.teacher_widths == [32, 64]
    assert (cfg.teachers, cfg.teacher_dropout, cfg.teacher_jitter) == (2, 0.3, 2)
    assert cfg.teacher_train_config() == TrainConfig(
        epochs=15, batch_size=128, optimizer="adam", lr=2e-3, weight_decay=0.0, seed=0,
        schedule="cosine")
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (30, 128, 1e-2)  # 1.6 million examples seen
    assert cfg.teacher_spec().build((1, 28, 28), 10).spec["kwargs"]["dropout"] == 0.3


def test_flags_and_config_files_win_over_auto(tmp_path):
    cfg = _cfg("--teachers", "4", "--teacher-lr", "0.01", "--teacher-epochs", "3", "--epochs", "7",
               "--teacher-dropout", "0", "--teacher-jitter", "auto").resolve_auto(*FM)
    assert (cfg.teachers, cfg.teacher_lr, cfg.teacher_epochs, cfg.epochs) == (4, 0.01, 3, 7)
    assert (cfg.teacher_dropout, cfg.teacher_jitter, cfg.teacher_batch_size) == (0.0, 2, 128)
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = "auto"\nbatch-size = 64\nteacher_optimizer = "sgd"\n')
    cfg = _cfg("--config", str(toml)).resolve_auto(*FM)
    assert (cfg.epochs, cfg.batch_size, cfg.teacher_optimizer, cfg.teacher_lr) == (30, 64, "sgd", 2e-3)
    assert _cfg("--teacher-arch", "convnet").resolve_auto(*FM).teacher_lr is None  # no recipe


@pytest.mark.parametrize(("shape", "n", "arch"), [
    ((1, 8, 8), 1213, "convnet"), ((3, 15, 32), 500, "convnet"), ((3, 16, 16), 500, "cnn"),
    ((1, 28, 28), 54_000, "cnn"), ((20,), 6000, "mlp"), ((784,), 54_000, "mlp"),
])  # fmt: skip
def test_the_auto_teacher_follows_the_input_shape(shape, n, arch):
    cfg = _cfg().resolve_auto(shape, n)
    assert cfg.teacher_arch == arch
    if arch == "cnn":  # its recipe, whatever the data size
        assert (cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_batch_size) == (15, 2e-3, 128)
    else:
        assert (cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_batch_size) == (30, None, None)
        assert cfg.teacher_jitter == (1 if len(shape) == 3 else 0)
        assert cfg.teacher_widths == ([256, 256] if arch == "mlp" else [32, 64])


def test_a_named_cnn_teacher_gets_its_recipe_even_on_small_data():
    cfg = _cfg("--teacher-arch", "cnn").resolve_auto((1, 8, 8), 1213)
    assert (cfg.teacher_arch, cfg.teacher_epochs, cfg.teacher_lr, cfg.teachers) == ("cnn", 15, 2e-3, 5)
    mixed = _cfg("--teacher-arch", "cnn", "mlp").resolve_auto((1, 28, 28), 500)
    assert (mixed.teacher_lr, mixed.teacher_epochs, mixed.teacher_widths) == (None, 30, [256, 256])


@pytest.mark.parametrize(("n", "teachers", "batch", "epochs"), [
    (1213, 5, 32, 120), (10_000, 5, 32, 120), (10_001, 2, 128, 120), (20_000, 2, 128, 80),
    (54_000, 2, 128, 30), (1_000_000, 2, 128, 5),
])  # fmt: skip
def test_budgets_scale_with_the_training_set(n, teachers, batch, epochs):
    cfg = _cfg().resolve_auto((30,), n)
    assert (cfg.teachers, cfg.batch_size, cfg.epochs) == (teachers, batch, epochs)


def test_the_word_auto_is_refused_where_an_option_has_no_auto(capsys):
    assert main(["run", "--out", "unused", "--lr", "auto"]) == 2
    assert "--lr" in capsys.readouterr().err


def test_a_resolved_config_round_trips_through_config_json(tmp_path):
    cfg = _cfg().resolve_auto(*FM)
    prepare_out(tmp_path / "run", cfg, "run", resume=False, overwrite=False)
    config = read_run_record(tmp_path / "run" / "config.json")["config"]
    assert config["teacher_lr"] == 2e-3 and config["teachers"] == 2 and config["epochs"] == 30
    assert RunConfig(**config) == cfg
    assert RunConfig(**config).resolve_auto(*FM) == cfg  # resolving again changes nothing


def test_an_old_record_gives_teachers_the_shared_options():
    config = read_run_record(FIXTURE / "complete" / "config.json")["config"]
    assert all(config[k] is None for k in NEW_KEYS)
    cfg = RunConfig(**config).resolve_auto((1, 8, 8), 1213)
    assert cfg.teacher_train_config() == cfg.train_config(cfg.teacher_epochs)
    assert (cfg.teacher_train_config().batch_size, cfg.teacher_train_config().lr) == (32, 0.01)


def _images(path: Path) -> Path:
    """A tiny npz of 16x16 one-channel images (3 classes): auto picks the cnn teacher."""
    g = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = g.normal(size=(90, 1, 16, 16)).astype(np.float32) + y[:, None, None, None]
    np.savez(path, X_train=x[:60], y_train=y[:60], X_test=x[60:], y_test=y[60:])
    return path


def test_a_run_with_auto_options_records_them_and_resumes_with_them(tmp_path, capsys):
    data = _images(tmp_path / "img.npz")
    argv = ["run", "--dataset", "npz", "--data-path", str(data), "--teachers", "1",
            "--teacher-epochs", "1", "--epochs", "2", "--temperature", "2", "--alpha", "0.9",
            "--no-specialists", "--quiet", "--device", "cpu"]  # fmt: skip
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 0
    saved = read_run_record(out / "config.json")["config"]
    assert saved["teacher_arch"] == "cnn" and saved["teacher_lr"] == 2e-3
    assert (saved["teacher_batch_size"], saved["teacher_dropout"], saved["teacher_jitter"]) == (
        128, 0.3, 2)
    assert (saved["teacher_epochs"], saved["epochs"], saved["batch_size"]) == (1, 2, 32)
    summary = (out / "summary.md").read_text()
    assert "- teachers: 1 x cnn [32, 64], dropout 0.3, shifts up to 2 px; 1 epochs, batch 128, " \
           "adam, lr 0.002" in summary
    before = json.loads((out / "summary.json").read_text())["rows"]
    # the baseline trained again on --resume: the recorded (resolved) settings, the same model
    shutil.rmtree(out / "baseline")
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    after = json.loads((out / "summary.json").read_text())["rows"]
    assert after == before
    # a typed flag that differs from the recorded auto value is refused, in one line
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--resume", "--teacher-lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher_lr" in err[0], err


@pytest.mark.parametrize(("flag", "value"), [("--teacher-optimizer", "foo"), ("--teacher-lr", "-1"),
                                             ("--teacher-batch-size", "0")])
def test_a_bad_teacher_option_is_named_in_one_line(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag[2:].replace("-", "_") in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("fraction,omit,epochs", [(1.0, [], 30), (0.5, [], 59), (0.03, [], 120),
                                                  (1.0, [0, 1, 2, 3, 4], 59)])
def test_the_students_budget_follows_the_transfer_set(fraction, omit, epochs):
    """Large data: a smaller transfer set gets more epochs (the same examples seen, at most 120)."""
    import torch

    from ensemble_kd.cli.context import transfer_size

    y = torch.arange(54_000) % 10
    splits = SimpleNamespace(y_train=y, n_classes=10)
    cfg = _cfg("--transfer-fraction", str(fraction), *(["--omit-classes", *map(str, omit)]
                                                       if omit else []))
    n = transfer_size(cfg, splits)
    assert n == round(fraction * 54_000 * (10 - len(omit)) / 10)
    assert cfg.resolve_auto((1, 28, 28), 54_000, n).epochs == epochs
    assert cfg.resolve_auto((1, 8, 8), 1_213, 40).epochs == 120  # small data: unchanged
