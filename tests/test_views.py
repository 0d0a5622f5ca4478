"""Augmented views (ensemble_kd.views): pure functions of (example, view, seed), each transform
checked against its definition, mixed labels, the epoch's batch source, and bad settings refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ensemble_kd.batching import Batch, TensorBatches, ViewBatches, stack_batches
from ensemble_kd.distill import DistillConfig
from ensemble_kd.losses import hard_loss, mixed_targets
from ensemble_kd.views import Mix, ViewConfig, make_views

EVERYTHING = ViewConfig(shift=1, crop_padding=2, flip=True, mixup=0.4, cutmix=1.0, noise=0.05,
                        views=5, seed=3)


def _images(n: int = 40, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _keys(n: int, views: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (64,), generator=g), torch.randint(0, views, (64,), generator=g)


def test_a_view_regenerated_from_its_key_is_bit_identical():
    x = _images()
    idx, view = _keys(len(x), EVERYTHING.views)
    batch, mix = make_views(x, idx, view, EVERYTHING)
    alone = [make_views(x, idx[b : b + 1], view[b : b + 1], EVERYTHING) for b in range(len(idx))]
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(2))
    shuffled, mix_s = make_views(x, idx[perm], view[perm], EVERYTHING)
    for b, (xa, ma) in enumerate(alone):  # independent of the batch's composition and order
        assert torch.equal(xa[0], batch[b])
        assert int(ma.partner) == int(mix.partner[b]) and torch.equal(ma.lam[0], mix.lam[b])
    assert torch.equal(shuffled, batch[perm]) and torch.equal(mix_s.lam, mix.lam[perm])
    # another view number, another seed: other inputs
    other_view, _ = make_views(x, idx, (view + 1) % EVERYTHING.views, EVERYTHING)
    other_seed, _ = make_views(x, idx, view, ViewConfig(**{**EVERYTHING.as_dict(), "seed": 4}))
    assert (other_view != batch).flatten(1).any(1).float().mean() > 0.9
    assert (other_seed != batch).flatten(1).any(1).float().mean() > 0.9


def _translations(img: torch.Tensor, k: int, mode: str) -> list[torch.Tensor]:
    """Every translation of img (C, H, W) by (dy, dx) in [-k, k]^2, by slicing a padded copy."""
    h, w = img.shape[-2:]
    padded = F.pad(img[None], (k, k, k, k), mode=mode)[0]
    return [padded[:, k + dy : k + dy + h, k + dx : k + dx + w]
            for dy in range(-k, k + 1) for dx in range(-k, k + 1)]


@pytest.mark.parametrize("kind, k", [("shift", 2), ("crop_padding", 3)])
def test_shift_and_crop_are_translations_within_k_and_every_offset_occurs(kind, k):
    x = _images(n=30, side=9)
    cfg = ViewConfig(**{kind: k}, views=40)
    idx = torch.arange(30).repeat_interleave(40)
    view = torch.arange(40).repeat(30)
    out, mix = make_views(x, idx, view, cfg)
    assert mix is None
    mode = "constant" if kind == "shift" else "reflect"  # zero fill; crop: reflect-padded image
    counts = torch.zeros((2 * k + 1) ** 2)
    for b in range(len(idx)):
        hits = [torch.equal(out[b], t) for t in _translations(x[idx[b]], k, mode)]
        assert any(hits), b
        counts[hits.index(True)] += 1
    expected = len(idx) / len(counts)  # uniform offsets: each about 1200 / 25 = 48 (or 1200 / 49)
    assert counts.min() > 0.4 * expected and counts.max() < 1.8 * expected


def test_flip_mirrors_about_half_the_views():
    x = _images(n=50)
    out, _ = make_views(x, torch.arange(50).repeat(4), torch.arange(4).repeat_interleave(50),
                        ViewConfig(flip=True, views=4))
    same = [torch.equal(o, x[i % 50]) for i, o in enumerate(out)]
    mirrored = [torch.equal(o, x[i % 50].flip(-1)) for i, o in enumerate(out)]
    assert all(a or b for a, b in zip(same, mirrored, strict=True))
    assert 70 <= sum(mirrored) <= 130  # of 200, binomial(200, 1/2): mean 100, sd 7


def test_mixup_blends_with_the_partner_and_lam_is_beta_distributed():
    x, a = _images(n=100), 0.4
    idx = torch.arange(100).repeat(40)
    view = torch.arange(40).repeat_interleave(100)
    out, mix = make_views(x, idx, view, ViewConfig(mixup=a, views=40))
    lam = mix.lam.double()
    torch.testing.assert_close(
        out, lam.float()[:, None, None, None] * x[idx] + (1 - lam.float())[:, None, None, None]
        * x[mix.partner])
    assert ((lam >= 0) & (lam <= 1)).all()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.1389 for a = 0.4; 4,000 draws
    assert abs(float(lam.mean()) - 0.5) < 0.03
    assert abs(float(lam.var()) - 1 / (4 * (2 * a + 1))) < 0.015
    # partners spread over the whole set, not just the batch
    assert len(set(mix.partner.tolist())) > 95


def test_uniform_mixup_weights_at_a_equal_one():
    k = torch.arange(4000)
    _, mix = make_views(_images(n=50), k % 50, k // 50, ViewConfig(mixup=1.0, views=80))
    hist = torch.histc(mix.lam, bins=4, min=0, max=1)  # Beta(1, 1) is uniform: 1,000 per bin
    assert hist.min() > 850 and hist.max() < 1150


def test_the_key_hash_is_exact_32_bit_arithmetic_and_a_bijection():
    from ensemble_kd.keyed import hash_key, mix32

    def reference(x: int) -> int:  # lowbias32 in Python's unbounded integers
        for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            x = ((x ^ (x >> shift)) * mult) % 2**32
        return x ^ (x >> 16)

    x = torch.cat([torch.arange(5000), torch.randint(0, 2**32, (5000,)), torch.tensor([2**32 - 1])])
    assert mix32(x).tolist() == [reference(int(v)) for v in x]
    assert len(set(mix32(torch.arange(2**16)).tolist())) == 2**16  # no collisions: a permutation
    keys = hash_key(3, torch.arange(200)[:, None], torch.arange(50)[None, :])  # (200, 50)
    assert keys.shape == (200, 50) and int(keys[7, 9]) == hash_key(3, 7, 9)  # tensors = ints
    bits = (keys[..., None] >> torch.arange(32)) & 1  # each bit fair over 10,000 keys
    assert ((bits.double().mean((0, 1)) - 0.5).abs() < 0.02).all()


def test_beta_quantiles_match_the_arcsine_law_and_the_uniform():
    from ensemble_kd.keyed import beta_quantile as _beta

    u = torch.cat([torch.rand(20_000, dtype=torch.float64), torch.tensor([0.0, 0.5, 1 - 2**-32])])
    # Beta(1/2, 1/2) is the arcsine distribution, Q(u) = sin^2(pi u / 2); Beta(1, 1) is uniform
    torch.testing.assert_close(_beta(0.5, u), torch.sin(torch.pi * u / 2) ** 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(_beta(1.0, u), u, rtol=0, atol=1e-12)
    q = _beta(3.0, u)  # a > 1: symmetric about 1/2, median 1/2
    torch.testing.assert_close(q + _beta(3.0, 1 - u), torch.ones_like(u), rtol=0, atol=1e-9)
    assert float(_beta(3.0, torch.tensor([0.5], dtype=torch.float64))) == pytest.approx(0.5)


def test_cutmix_pastes_a_box_of_the_partner_and_lam_is_the_kept_area():
    n, side = 30, 16
    x = torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None].expand(n, 1, side, side)
    idx = torch.arange(n).repeat(10)
    out, mix = make_views(x.contiguous(), idx, torch.arange(10).repeat_interleave(n),
                          ViewConfig(cutmix=1.0, views=10))
    boxes = 0
    for b in range(len(idx)):
        own, other = float(idx[b] + 1), float(mix.partner[b] + 1)
        if own == other:
            continue
        is_own, is_other = out[b, 0] == own, out[b, 0] == other
        assert (is_own | is_other).all()  # nothing blended: every pixel comes from one image
        assert float(is_own.float().mean()) == pytest.approx(float(mix.lam[b]), abs=1e-6)
        rows, cols = is_other.any(1).nonzero().flatten(), is_other.any(0).nonzero().flatten()
        if len(rows):  # the partner's pixels form one axis-aligned rectangle
            boxes += 1
            assert int(is_other.sum()) == len(rows) * len(cols)
            assert is_other[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert boxes > 200


def test_noise_is_gaussian_with_the_asked_std():
    x = torch.zeros(200, 50)
    out, mix = make_views(x, torch.arange(200), torch.zeros(200, dtype=torch.long),
                          ViewConfig(noise=0.5))
    assert mix is None
    z = out.flatten().double() / 0.5
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02  # 10,000 draws
    assert abs(float((z.abs() < 1).double().mean()) - math.erf(1 / math.sqrt(2))) < 0.015


def test_mixed_targets_sum_to_one_and_hold_lam_and_its_complement():
    y, yp = torch.tensor([0, 2, 1, 3]), torch.tensor([1, 2, 3, 0])
    lam = torch.tensor([0.25, 0.6, 1.0, 0.0])
    t = mixed_targets(y, yp, lam, 4)
    expected = torch.tensor([[0.25, 0.75, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    # the mixed hard term is lam CE(y) + (1 - lam) CE(partner's y), batch mean
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    ce = F.cross_entropy(logits, y, reduction="none"), F.cross_entropy(logits, yp, reduction="none")
    parts = hard_loss(logits, y, Mix(torch.zeros(4, dtype=torch.long), lam, yp))
    torch.testing.assert_close(parts.loss, (lam * ce[0] + (1 - lam) * ce[1]).mean())


@pytest.mark.parametrize("cfg", [
    # one translation, mixed up or not: the epoch's windows located at once (EpochViews.fast)
    ViewConfig(shift=1, mixup=0.4, views=3, seed=7),
    ViewConfig(crop_padding=2, mixup=1.0, views=3, seed=2),
    ViewConfig(shift=2, views=3, seed=5),
    # the general path, batch by batch
    ViewConfig(crop_padding=2, shift=1, flip=True, cutmix=1.0, mixup=0.3, noise=0.1, views=3),
    ViewConfig(mixup=0.4, views=3),
])
def test_view_batches_draw_views_per_epoch_and_regenerate_them(cfg):
    x, y = _images(n=50), torch.arange(50) % 5
    src = ViewBatches(x, y, views=cfg, batch_size=16)
    epoch = list(src.epoch(torch.Generator().manual_seed(0)))
    idx = torch.cat([b.idx for b in epoch])
    assert sorted(idx.tolist()) == list(range(50))  # every example once
    view = torch.cat([b.view for b in epoch])
    assert view.min() >= 0 and view.max() < 3 and len(set(view.tolist())) == 3
    for b in epoch:
        xv, mix = make_views(x, b.idx, b.view, cfg)
        assert torch.equal(b.x, xv) and torch.equal(b.y, y[b.idx])
        if cfg.mixes:
            assert torch.equal(b.mix.lam, mix.lam) and torch.equal(b.mix.partner, mix.partner)
            assert torch.equal(b.mix.partner_y, y[mix.partner])
        else:
            assert b.mix is None and mix is None
    again = list(src.epoch(torch.Generator().manual_seed(0)))
    for a, b in zip(epoch, again, strict=True):  # the same generator: the same views, bit for bit
        assert torch.equal(a.x, b.x) and torch.equal(a.view, b.view)
    other = torch.cat([b.view for b in src.epoch(torch.Generator().manual_seed(1))])
    assert not torch.equal(other, view)  # epochs (other generators) draw other views


def test_plain_view_batches_are_todays_batches():
    x, y = _images(n=50), torch.arange(50) % 5
    ours = ViewBatches(x, y, views=ViewConfig(), batch_size=16).epoch(torch.Generator().manual_seed(0))
    today = TensorBatches(x, y, batch_size=16).epoch(torch.Generator().manual_seed(0))
    for a, b in zip(ours, today, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.idx, b.idx) and a.mix is None


def test_batch_rows_keep_views_and_mixes_and_stacking_refuses_mixes():
    x, y = _images(n=20), torch.arange(20) % 4
    b = next(ViewBatches(x, y, views=ViewConfig(mixup=1.0, views=2), batch_size=8).epoch(
        torch.Generator().manual_seed(0)))
    part = b.rows(slice(2, 5))
    assert torch.equal(part.x, b.x[2:5]) and torch.equal(part.view, b.view[2:5])
    assert torch.equal(part.mix.lam, b.mix.lam[2:5]) and torch.equal(part.mix.partner_y, b.mix.partner_y[2:5])
    assert Batch(b.x, b.y, b.idx).view is None  # positional construction as before
    with pytest.raises(ValueError, match="mixup"):
        stack_batches([b, b])


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        (dict(shift=1), (10,), "shift needs image inputs"),
        (dict(crop_padding=2), (3, 4), "crop_padding needs image inputs"),
        (dict(flip=True), (10,), "flip needs image inputs"),
        (dict(cutmix=1.0), (10,), "cutmix needs image inputs"),
        (dict(crop_padding=8), (1, 8, 8), "smaller than the image side"),
        (dict(mixup=-0.2), None, "mixup must be a Beta parameter > 0"),
        (dict(cutmix=float("nan")), None, "cutmix must be a Beta parameter > 0"),
        (dict(noise=-0.1), None, "noise must be a std >= 0"),
        (dict(shift=-1), None, "shift must be an integer >= 0"),
        (dict(shift=1.5), None, "shift must be an integer >= 0"),
        (dict(shift=1, views=0), None, "V must be an integer >= 1"),
        (dict(views=3), None, "3 views without any augmentation"),
        (dict(views=None), None, "unbounded views"),
    ],
)
def test_views_that_do_not_fit_are_refused_in_one_line(kwargs, shape, match):
    with pytest.raises(ValueError, match=match) as e:
        ViewConfig(**kwargs).validate(shape)
    assert "\n" not in str(e.value)


def test_distill_config_refuses_views_it_cannot_honour():
    with pytest.raises(ValueError, match="use views.shift instead of jitter"):
        DistillConfig(online=True, jitter=1, views=ViewConfig(shift=1)).validate()
    with pytest.raises(ValueError, match="unbounded views .* cannot be cached"):
        DistillConfig(views=ViewConfig(shift=1, views=None)).validate()
    DistillConfig(online=True, views=ViewConfig(shift=1, views=None)).validate()  # online: fine
    DistillConfig(online=True, jitter=1, views=ViewConfig()).validate()  # plain views: no clash
    with pytest.raises(ValueError, match="shift needs image inputs"):
        ViewBatches(torch.zeros(10, 3), views=ViewConfig(shift=1))
