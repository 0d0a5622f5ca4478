"""Model builders, specs, saving/loading and head replacement."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ensemble_kd.checkpoint import load_model, model_meta, save_model
from ensemble_kd.io import FormatError
from ensemble_kd.models import (
    available_models,
    build_model,
    count_parameters,
    model_from_spec,
    replace_head,
)


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_registry_names():
    assert {"mlp", "convnet", "cnn"} <= set(available_models())


@pytest.mark.parametrize(
    "name, input_shape, kwargs",
    [
        ("mlp", (1, 8, 8), dict(widths=(16,))),
        ("mlp", (12,), dict(widths=(8, 8), dropout=0.2)),
        ("mlp", (12,), dict(widths=())),  # a linear model
        ("convnet", (1, 8, 8), dict(channels=(4, 8))),
        ("convnet", (3, 7, 5), dict(channels=(4,), dropout=0.1)),  # odd sizes: ceil-mode pooling
        ("cnn", (1, 8, 8), dict()),  # digits: the pooled grid shrinks to the 2x2 left
        ("cnn", (1, 28, 28), dict(dropout=0.3)),
        ("cnn", (3, 32, 32), dict(channels=(8, 16, 16), hidden=0)),
        ("cnn", (3, 7, 5), dict(channels=(4,), grid=2)),
    ],
)
def test_output_shapes(name, input_shape, kwargs):
    model = build_model(name, input_shape, 7, **kwargs)
    assert model(_x(5, *input_shape)).shape == (5, 7)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    assert model.spec["name"] == name and model.spec["n_classes"] == 7
    assert model.spec["input_shape"] == list(input_shape)


def test_mlp_parameter_count():
    # 64*16 + 16 hidden, 16*10 + 10 head
    assert count_parameters(build_model("mlp", (1, 8, 8), 10, widths=[16])) == 1040 + 170


def test_cnn_parameter_count():
    # (1, 28, 28), defaults: conv 1*32*9 + BN 64, conv 32*64*9 + BN 128, dense 64*7*7*128 + 128,
    # head 128*10 + 10
    model = build_model("cnn", (1, 28, 28), 10)
    assert count_parameters(model) == 288 + 64 + 18432 + 128 + 401536 + 1290 == 421738
    # tiny inputs never upsample: 8x8 -> 4x4 -> 2x2, so the dense layer sees 64*2*2 features
    dense = [m for m in build_model("cnn", (1, 8, 8), 10).body if isinstance(m, nn.Linear)]
    assert [m.in_features for m in dense] == [64 * 2 * 2]


def test_cnn_fits_random_labels():
    torch.manual_seed(0)
    x, y = _x(64, 1, 12, 12), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    model = build_model("cnn", (1, 12, 12), 10, channels=(8, 16), hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(-1) == y).float().mean() == 1.0


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("mlp", dict(widths=(16, 8), dropout=0.3)),
        ("convnet", dict(channels=(4, 6))),
        ("cnn", dict(channels=(4, 6), hidden=8, dropout=0.2)),
    ],
)
def test_spec_round_trip_through_save_and_load(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, **kwargs)
    if name in ("convnet", "cnn"):  # move the batch-norm running stats away from their start
        model.train()
        with torch.no_grad():
            model(_x(16, 1, 8, 8, seed=3) * 5)
    model.eval()
    path = tmp_path / "m.pt"
    save_model(path, model, meta={"note": "hello", "classes": list("abcdefghij")})
    loaded, meta = load_model(path)
    assert meta == {"note": "hello", "classes": list("abcdefghij")}
    assert not loaded.training
    assert loaded.spec == json.loads(json.dumps(model.spec))
    x = _x(9, 1, 8, 8, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert model_meta(path)["note"] == "hello"
    assert model_meta(path)["spec"]["name"] == name


def test_model_from_spec_rebuilds_architecture():
    model = build_model("mlp", (5,), 3, widths=[7])
    clone = model_from_spec(json.loads(json.dumps(model.spec)))
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]


def test_replace_head(tmp_path):
    torch.manual_seed(1)
    model = build_model("mlp", (6,), 10, widths=[5])
    body_before = [p.clone() for p in model.body.parameters()]
    new = replace_head(model, 4)
    assert model.head is new and new.in_features == 5 and new.out_features == 4
    assert model(_x(3, 6)).shape == (3, 4)
    assert all(torch.equal(a, b) for a, b in zip(body_before, model.body.parameters(), strict=True))
    assert model.spec["head_out"] == 4 and model.spec["n_classes"] == 10
    # the resized head survives a save/load round trip
    model.eval()
    save_model(tmp_path / "spec.pt", model)
    loaded, _ = load_model(tmp_path / "spec.pt")
    x = _x(4, 6, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_replace_head_needs_a_head():
    with pytest.raises(ValueError, match="head"):
        replace_head(nn.Sequential(nn.Linear(3, 2)), 4)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        build_model("resnet9000", (1, 8, 8), 10)


@pytest.mark.parametrize("name", ["convnet", "cnn"])
def test_image_models_on_vector_inputs(name):
    with pytest.raises(ValueError, match="image inputs"):
        build_model(name, (32,), 10)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("mlp", dict(widths=[0]), "widths"),
        ("mlp", dict(dropout=1.0), "dropout"),
        ("convnet", dict(dropout=-0.1), "dropout"),
        ("cnn", dict(dropout=1.0), "dropout"),
        ("cnn", dict(channels=[]), "channels"),
        ("cnn", dict(channels=[8, 0]), "channels"),
        ("cnn", dict(hidden=-1), "hidden"),
        ("cnn", dict(grid=0), "grid"),
        ("cnn", dict(widths=[8]), "bad options"),
        ("mlp", dict(depth=3), "bad options"),
    ],
)
def test_bad_builder_options(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, (1, 8, 8), 10, **kwargs)


def test_bad_class_count():
    with pytest.raises(ValueError, match="n_classes"):
        build_model("mlp", (4,), 0)


def test_save_needs_spec(tmp_path):
    with pytest.raises(ValueError, match="spec"):
        save_model(tmp_path / "x.pt", nn.Linear(2, 2))


def test_load_truncated_model_is_format_error(tmp_path):
    path = tmp_path / "m.pt"
    save_model(path, build_model("mlp", (4,), 3, widths=[4]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        load_model(path)


def test_load_mismatched_weights_is_format_error(tmp_path):
    from ensemble_kd.io import load_tensors, save_tensors

    path = tmp_path / "m.pt"
    save_model(path, build_model("mlp", (4,), 3, widths=[4]))
    obj = load_tensors(path)
    spec = json.loads(obj["spec"])
    spec["kwargs"]["widths"] = [5]  # claims another architecture than the weights have
    obj["spec"] = json.dumps(spec)
    save_tensors(path, obj)
    with pytest.raises(FormatError, match="do not match"):
        load_model(path)


def test_model_spec_builds_the_cnn_with_its_widths_as_channels():
    from ensemble_kd import ModelSpec

    m = ModelSpec("cnn", (8, 16), 0.3).build((1, 28, 28), 10)
    convs = [layer for layer in m.modules() if isinstance(layer, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert m.spec["kwargs"]["dropout"] == 0.3
