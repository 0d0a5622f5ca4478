"""Teachers trained on augmented views (``train_ensemble(views=...)``, CLI ``--teacher-mixup``)."""

from __future__ import annotations

import json

import pytest
import torch

from ensemble_kd.cli import main
from ensemble_kd.distill import train_baseline
from ensemble_kd.ensemble import ModelSpec, train_ensemble
from ensemble_kd.train import TrainConfig
from ensemble_kd.transfer import make_transfer_set
from ensemble_kd.views import ViewConfig

SPEC = ModelSpec("mlp", (24,), 0.0)
CFG = TrainConfig(epochs=2, batch_size=128, lr=3e-3, seed=5)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_a_teacher_on_views_sees_what_a_hard_label_model_on_those_views_sees(digits, tmp_path):
    """Teacher k on views = the same model trained by ``train_baseline`` on the same views with
    seed + k: bit-identical weights, so the teacher's batches are the documented views."""
    views = ViewConfig(shift=1, mixup=0.4, views=None)
    teachers = train_ensemble(digits, SPEC, 2, CFG, tmp_path / "t", views=views, progress=False)
    transfer = make_transfer_set(digits)
    for k, teacher in enumerate(teachers):
        cfg = TrainConfig(**{**vars(CFG), "seed": CFG.seed + k})
        torch.manual_seed(cfg.seed)  # the teacher's initial weights, as train_ensemble draws them
        model = SPEC.build(digits.input_shape, digits.n_classes)
        ref = train_baseline(model, transfer, cfg, views=views, progress=False).model
        for a, b in zip(_weights(teacher), _weights(ref), strict=True):
            assert torch.equal(a, b)


def test_views_change_the_teachers_and_no_augmentation_is_the_plain_path(digits, tmp_path):
    plain = train_ensemble(digits, SPEC, 1, CFG, tmp_path / "p", progress=False)[0]
    same = train_ensemble(digits, SPEC, 1, CFG, tmp_path / "s", views=ViewConfig(),
                          progress=False)[0]
    mixed = train_ensemble(digits, SPEC, 1, CFG, tmp_path / "m",
                           views=ViewConfig(mixup=0.4), progress=False)[0]
    assert all(torch.equal(a, b) for a, b in zip(_weights(plain), _weights(same), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(plain), _weights(mixed), strict=True))


def test_mixup_teachers_are_less_sure_of_their_training_images(digits, tmp_path):
    """Mixup's known effect (Zhang et al. 2018; Thulasidasan et al. 2019): a model trained on mixed
    labels puts less than all its mass on the label of the images it trained on, so its soft
    targets there carry more than the label."""
    cfg = TrainConfig(epochs=30, batch_size=64, lr=1e-2, seed=0)
    spec = ModelSpec("mlp", (64,), 0.0)
    plain = train_ensemble(digits, spec, 1, cfg, tmp_path / "p", progress=False)[0]
    mixed = train_ensemble(digits, spec, 1, cfg, tmp_path / "m", views=ViewConfig(mixup=1.0),
                           progress=False)[0]
    with torch.no_grad():
        top = [m(digits.x_train).softmax(-1).max(-1).values.mean().item() for m in (plain, mixed)]
    assert top[0] > 0.95  # the plain teacher is near certain on its training images
    assert top[1] < top[0] - 0.05, top  # measured 0.978 against 0.883 (seeds 0-2 alike)


def test_views_resume_only_into_the_same_views(digits, tmp_path):
    """A checkpoint of a teacher on views is not resumed by a run with other inputs."""
    folder = tmp_path / "t"
    cfg = TrainConfig(epochs=3, batch_size=128, lr=3e-3)

    def stop(record):
        raise KeyboardInterrupt

    from ensemble_kd import ensemble as ens
    real = ens.train

    def interrupted(*a, **k):
        return real(*a, **{**k, "on_epoch_end": stop})

    ens.train = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train_ensemble(digits, SPEC, 1, cfg, folder, views=ViewConfig(mixup=0.4),
                           vectorize=False, progress=False)
    finally:
        ens.train = real
    assert (folder / "teacher_0" / "checkpoint.pt").exists()
    with pytest.raises(ValueError):
        train_ensemble(digits, SPEC, 1, cfg, folder, vectorize=False, progress=False)
    resumed = train_ensemble(digits, SPEC, 1, cfg, folder, views=ViewConfig(mixup=0.4),
                             vectorize=False, progress=False)[0]
    fresh = train_ensemble(digits, SPEC, 1, cfg, tmp_path / "f", views=ViewConfig(mixup=0.4),
                           vectorize=False, progress=False)[0]
    assert all(torch.equal(a, b) for a, b in zip(_weights(resumed), _weights(fresh), strict=True))


def test_views_are_refused_where_they_do_not_fit(digits, tmp_path):
    with pytest.raises(ValueError, match="jitter and views"):
        train_ensemble(digits, SPEC, 1, CFG, tmp_path / "a", jitter=1,
                       views=ViewConfig(mixup=0.2), progress=False)
    with pytest.raises(ValueError, match="vectorised teachers cannot train on mixup"):
        train_ensemble(digits, SPEC, 2, CFG, tmp_path / "b", views=ViewConfig(mixup=0.2),
                       vectorize=True, progress=False)
    with pytest.raises(ValueError, match="mixup"):
        train_ensemble(digits, SPEC, 1, CFG, tmp_path / "c", views=ViewConfig(mixup=-1.0),
                       progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


TEACHERS = ["train-ensemble", "--dataset", "digits", "--teachers", "2", "--teacher-arch", "mlp",
            "--teacher-widths", "16", "--teacher-epochs", "1", "--batch-size", "128", "--quiet"]


def test_cli_teacher_mixup_is_recorded_and_trains_on_mixed_shifted_views(tmp_path):
    out = tmp_path / "t"
    assert main([*TEACHERS, "--out", str(out), "--teacher-mixup", "0.3"]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["teacher_mixup"] == 0.3 and cfg["teacher_jitter"] == 1  # digits: 1-px shifts
    ident = json.loads(torch.load(out / "teachers" / "teacher_1" / "checkpoint.pt",
                                  weights_only=True)["identity"])
    assert ident["extra"]["views"]["mixup"] == 0.3 and ident["extra"]["views"]["shift"] == 1
    assert "mixup 0.3" in (out / "summary.md").read_text()


@pytest.mark.parametrize("flags,msg", [
    (["--teacher-mixup", "-0.5"], "teacher_mixup must be >= 0"),
    (["--teacher-mixup", "nan"], "teacher_mixup must be >= 0"),
    (["--teacher-mixup", "0.2", "--teacher-vectorize", "on"], "cannot train on mixup"),
])
def test_cli_bad_teacher_mixup_is_one_line_and_writes_nothing(tmp_path, capsys, flags, msg):
    out = tmp_path / "bad"
    assert main([*TEACHERS, "--out", str(out), *flags]) != 0
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()
