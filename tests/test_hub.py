"""torchvision/NAME and timm/NAME models, tested with stand-in ``torchvision`` and ``timm`` modules.

Neither package is installed here (and nothing can be downloaded), so each test puts a small fake
of the part of its API that ensemble-kd calls (``torchvision.models.get_model``,
``timm.create_model``) into ``sys.modules``. The fakes check that no pretrained weights are asked for.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from ensemble_kd.checkpoint import load_model, save_model
from ensemble_kd.cli import main
from ensemble_kd.factories import build_any
from ensemble_kd.hub import is_hub_name


class TinyResNet(nn.Module):
    """The shape of a torchvision ResNet in miniature: conv1 (3 channels) ... fc."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn1(self.conv1(x)))).flatten(1))


@pytest.fixture
def fake_hubs(monkeypatch):
    calls = []

    def get_model(name, weights=None, **kwargs):
        calls.append(("torchvision", name, weights, kwargs))
        assert weights is None  # nothing is ever downloaded
        if name != "resnet18":
            raise ValueError(f"Unknown model {name}")
        return TinyResNet(**kwargs)

    def create_model(name, pretrained=False, **kwargs):
        calls.append(("timm", name, pretrained, kwargs))
        assert pretrained is False
        return TinyResNet(**kwargs)

    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.get_model = get_model
    timm = types.ModuleType("timm")
    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_hub_names_never_look_like_import_paths():
    assert is_hub_name("torchvision/resnet18") and is_hub_name("timm/resnet18")
    assert not is_hub_name("torchvision:resnet18") and not is_hub_name("other/resnet18")
    assert not is_hub_name("timm/") and not is_hub_name("timm/a/b")


def test_torchvision_model_adapted_to_channels_and_classes(fake_hubs, tmp_path):
    model = build_any("torchvision/resnet18", (1, 8, 8), 10)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert model.spec["name"] == "torchvision/resnet18"
    assert fake_hubs[-1] == ("torchvision", "resnet18", None, {"num_classes": 10})
    save_model(tmp_path / "m.pt", model)
    again, _ = load_model(tmp_path / "m.pt")  # no consent needed: not an import path
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(again(x), model.eval()(x))


def test_timm_model_takes_the_channels_itself(fake_hubs):
    model = build_any("timm/resnet18", (2, 8, 8), 5, drop_rate=0.0)
    assert model.conv1.in_channels == 2 and model.fc.out_features == 5
    assert fake_hubs[-1] == ("timm", "resnet18", False,
                             {"num_classes": 5, "in_chans": 2, "drop_rate": 0.0})


def test_pretrained_weights_from_a_local_file(fake_hubs, tmp_path):
    torch.manual_seed(0)
    pretrained = TinyResNet(1000)
    torch.save(pretrained.state_dict(), tmp_path / "resnet18.pt")
    model = build_any("torchvision/resnet18", (3, 8, 8), 10, weights=str(tmp_path / "resnet18.pt"))
    torch.testing.assert_close(model.conv1.weight, pretrained.conv1.weight)  # fits: loaded
    assert model.fc.out_features == 10  # another class count: left at its initial values
    save_model(tmp_path / "m.pt", model)
    (tmp_path / "resnet18.pt").unlink()  # the saved model does not need the weights file again
    again, _ = load_model(tmp_path / "m.pt")
    torch.testing.assert_close(again.conv1.weight, pretrained.conv1.weight)


def test_hub_mistakes_are_one_line(fake_hubs, monkeypatch):
    with pytest.raises(ValueError, match=r"'torchvision/nonet' cannot be built: ValueError: Unknown"):
        build_any("torchvision/nonet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"needs image inputs"):
        build_any("timm/resnet18", (32,), 10)
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(ValueError, match=r"need the timm package, which is not installed"):
        build_any("timm/resnet18", (1, 8, 8), 10)


def test_train_an_ensemble_of_torchvision_teachers(fake_hubs, tmp_path):
    out = tmp_path / "run"
    assert main(["train-ensemble", "--dataset", "digits", "--teachers", "2", "--teacher-arch",
                 "torchvision/resnet18", "timm/resnet18", "--teacher-epochs", "1",
                 "--batch-size", "256", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    names = [load_model(out / "teachers" / f"teacher_{k}" / "model.pt")[0].spec["name"]
             for k in range(2)]
    assert names == ["torchvision/resnet18", "timm/resnet18"]
