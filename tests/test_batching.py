"""Batches sliced from in-memory tensors: reproducibility, jitter, mixed pools, Datasets."""

from __future__ import annotations

import pytest
import torch

from ensemble_kd.batching import DatasetBatches, MixedBatches, TensorBatches, jitter


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tagged(n: int, shape=(3,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose every entry equals the example's row number, and labels row % 4."""
    x = torch.arange(n, dtype=torch.float32).reshape(n, *[1] * len(shape)).expand(n, *shape)
    return x.clone(), torch.arange(n) % 4


# --------------------------------------------------------------------------- TensorBatches


@pytest.mark.parametrize("n, bs", [(10, 3), (12, 4), (7, 10), (1, 1)])
def test_every_example_exactly_once_per_epoch(n, bs):
    x, y = _tagged(n)
    src = TensorBatches(x, y, batch_size=bs)
    gen = _gen(1)
    for _ in range(2):  # two epochs in a row, each a full pass
        batches = list(src.epoch(gen))
        assert len(batches) == len(src) == -(-n // bs)
        idx = torch.cat([b.idx for b in batches])
        assert sorted(idx.tolist()) == list(range(n))
        assert all(len(b.idx) <= bs for b in batches)
        for b in batches:  # x and y are the rows at idx
            assert torch.equal(b.x[:, 0], b.idx.float())
            assert torch.equal(b.y, b.idx % 4)


def test_shuffle_changes_order_between_epochs_and_false_keeps_it():
    x, y = _tagged(50)
    gen = _gen(0)
    src = TensorBatches(x, y, batch_size=50)
    first, second = (next(iter(src.epoch(gen))).idx for _ in range(2))
    assert not torch.equal(first, second)
    assert not torch.equal(first, torch.arange(50))
    fixed = TensorBatches(x, y, batch_size=16, shuffle=False)
    assert torch.equal(torch.cat([b.idx for b in fixed.epoch(gen)]), torch.arange(50))


def test_drop_last():
    x, y = _tagged(10)
    src = TensorBatches(x, y, batch_size=4, drop_last=True)
    batches = list(src.epoch(_gen()))
    assert len(src) == 2 and [len(b.idx) for b in batches] == [4, 4]


def test_same_seed_same_batches_other_seed_other_batches():
    x, y = _tagged(40)
    src = TensorBatches(x, y, batch_size=7)

    def order(seed):
        return torch.cat([b.idx for b in src.epoch(_gen(seed))])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))


def test_unlabelled_batches_have_no_labels():
    x, _ = _tagged(9)
    batches = list(TensorBatches(x, None, batch_size=4).epoch(_gen()))
    assert all(b.y is None for b in batches)
    assert sorted(torch.cat([b.idx for b in batches]).tolist()) == list(range(9))


def test_to_keeps_settings_and_original():
    x, y = _tagged(9)
    src = TensorBatches(x, y, batch_size=4, shuffle=False)
    moved = src.to(torch.device("cpu"))
    assert len(moved) == len(src) == 3 and moved.shuffle is False
    assert torch.equal(torch.cat([b.idx for b in moved.epoch(_gen())]), torch.arange(9))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.zeros(0, 3)), "empty"),
        (dict(y=torch.zeros(5, dtype=torch.long)), "labels have 5"),
        (dict(batch_size=0), "batch_size"),
        (dict(jitter=1), "jitter"),  # vector inputs cannot be shifted
    ],
)
def test_tensor_batches_bad_input(kwargs, match):
    args = dict(x=torch.zeros(6, 3), y=torch.zeros(6, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TensorBatches(args.pop("x"), args.pop("y"), **args)


# --------------------------------------------------------------------------- jitter


def test_jitter_zero_is_identity():
    x = torch.rand(4, 1, 5, 5, generator=_gen())
    assert jitter(x, 0, _gen()) is x


def _shift(img: torch.Tensor, dr: int, dc: int) -> torch.Tensor:
    """``img`` (C, H, W) moved down by dr and right by dc, zero filled."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[:, max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = img[
        :, max(-dr, 0) : h + min(-dr, 0), max(-dc, 0) : w + min(-dc, 0)
    ]
    return out


def test_jitter_is_an_exact_zero_padded_shift_within_k():
    k, b = 2, 64
    x = torch.rand(b, 2, 7, 9, generator=_gen(5)) + 0.5  # positive, so padding zeros stand out
    out = jitter(x, k, _gen(6))
    assert out.shape == x.shape
    shifts = []
    for i in range(b):
        found = [
            (dr, dc)
            for dr in range(-k, k + 1)
            for dc in range(-k, k + 1)
            if torch.equal(out[i], _shift(x[i], dr, dc))
        ]
        assert len(found) == 1, f"image {i} is not a shift of its input by at most {k}"
        shifts.append(found[0])
    # the offsets are random: many of the 25 possible ones occur, including no shift at all
    assert len(set(shifts)) >= 15


def test_jitter_moves_a_bright_pixel_by_the_drawn_offset():
    k, b, h, w = 2, 32, 9, 9
    x = torch.zeros(b, 1, h, w)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the middle: never pushed out by a shift <= 2
    out = jitter(x, k, _gen(11))
    # the implementation draws (2, B) offsets in [0, 2k] from the generator first
    off = torch.randint(0, 2 * k + 1, (2, b), generator=_gen(11)) - k  # (2, B) in [-k, k]
    moved = torch.stack([(out[i, 0] == 1.0).nonzero()[0] - 4 for i in range(b)], 1)  # (2, B)
    assert all(int((out[i] != 0).sum()) == 1 for i in range(b))  # content kept, nothing else
    # content moves by the offset (in one fixed direction convention)
    assert torch.equal(moved, -off) or torch.equal(moved, off)
    assert not torch.equal(off, torch.zeros_like(off))


def test_jitter_pads_with_zeros():
    k = 3
    x = torch.ones(50, 1, 6, 6)
    out = jitter(x, k, _gen(2))
    for img in out[:, 0]:
        rows = int(img.any(1).sum())  # rows still holding image content
        cols = int(img.any(0).sum())
        assert rows >= 6 - k and cols >= 6 - k
        assert float(img.sum()) == rows * cols  # ones inside the kept window, exact zeros outside


def test_jitter_on_batches_reproducible():
    x = torch.rand(20, 1, 6, 6, generator=_gen(3))
    src = TensorBatches(x, None, batch_size=8, jitter=1)
    a = [b.x for b in src.epoch(_gen(9))]
    b = [b.x for b in src.epoch(_gen(9))]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    plain = [x[bt.idx] for bt in TensorBatches(x, None, batch_size=8).epoch(_gen(9))]
    assert any(not torch.equal(u, v) for u, v in zip(a, plain, strict=True))


def test_jitter_rejects_vectors():
    with pytest.raises(ValueError, match="image"):
        jitter(torch.zeros(3, 4), 1, _gen())


# --------------------------------------------------------------------------- MixedBatches


def test_mixed_batches_share_and_pools_cycle():
    n = 26
    x, y = _tagged(n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:10] = True  # 10 special examples, 16 others
    src = MixedBatches(x, y, mask, share=0.5, batch_size=8)
    assert src.training_share == 0.5
    batches = list(src.epoch(_gen(4)))
    # an epoch is one pass over the special pool: ceil(10 / 4) batches of 4 special + 4 others
    assert len(src) == len(batches) == 3
    for b in batches:
        assert len(b.idx) == 8
        assert int(mask[b.idx].sum()) == 4
        assert torch.equal(b.x[:, 0], b.idx.float()) and torch.equal(b.y, b.idx % 4)
    inside = torch.cat([b.idx[mask[b.idx]] for b in batches])
    # 12 draws from a pool of 10: the first 10 are a full permutation, then the pool cycles
    assert sorted(inside[:10].tolist()) == list(range(10))
    outside = torch.cat([b.idx[~mask[b.idx]] for b in batches])
    assert len(set(outside.tolist())) == 12  # 12 of the 16 others, none repeated


def test_mixed_batches_small_outside_pool_cycles():
    n = 13
    x, y = _tagged(n)
    mask = torch.ones(n, dtype=torch.bool)
    mask[-3:] = False  # 10 special, only 3 others
    src = MixedBatches(x, y, mask, share=0.5, batch_size=8)
    outside = torch.cat([b.idx[~mask[b.idx]] for b in src.epoch(_gen(0))])
    assert len(outside) == 12
    # four whole passes over the 3 others
    assert sorted(outside.tolist()) == sorted([10, 11, 12] * 4)


def test_mixed_batches_training_share_rounds_to_whole_examples():
    x, y = _tagged(30)
    mask = torch.arange(30) < 15
    src = MixedBatches(x, y, mask, share=0.3, batch_size=7)  # 2.1 -> 2 special per batch
    assert src.training_share == pytest.approx(2 / 7)
    assert all(int(mask[b.idx].sum()) == 2 for b in src.epoch(_gen()))
    extreme = MixedBatches(x, y, mask, share=0.99, batch_size=4)  # keep at least one other
    assert extreme.training_share == pytest.approx(3 / 4)


def test_mixed_batches_reproducible():
    x, y = _tagged(30)
    src = MixedBatches(x, y, torch.arange(30) % 3 == 0, batch_size=6)
    a = torch.cat([b.idx for b in src.epoch(_gen(8))])
    assert torch.equal(a, torch.cat([b.idx for b in src.epoch(_gen(8))]))


@pytest.mark.parametrize(
    "mask, share, match",
    [
        (torch.arange(10) < 5, 0.0, "share"),
        (torch.arange(10) < 5, 1.0, "share"),
        (torch.arange(9) < 5, 0.5, "mask must have shape"),
        (torch.ones(10, dtype=torch.bool), 0.5, "inside and outside"),
        (torch.zeros(10, dtype=torch.bool), 0.5, "inside and outside"),
    ],
)
def test_mixed_batches_bad_input(mask, share, match):
    x, y = _tagged(10)
    with pytest.raises(ValueError, match=match):
        MixedBatches(x, y, mask, share=share, batch_size=4)


# --------------------------------------------------------------------------- DatasetBatches


def test_dataset_batches_indices_match_data():
    x, y = _tagged(23)
    ds = torch.utils.data.TensorDataset(x, y)
    src = DatasetBatches(ds, batch_size=5)
    assert len(src) == 5
    batches = list(src.epoch(_gen(2)))
    idx = torch.cat([b.idx for b in batches])
    assert sorted(idx.tolist()) == list(range(23))
    assert not torch.equal(idx, torch.arange(23))  # shuffled
    for b in batches:
        assert b.idx.dtype == torch.int64
        assert torch.equal(b.x, x[b.idx]) and torch.equal(b.y, y[b.idx])
    again = torch.cat([b.idx for b in src.epoch(_gen(2))])
    assert torch.equal(idx, again)  # the generator fixes the order


def test_dataset_batches_unlabelled_bare_items():
    x, _ = _tagged(7)

    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    src = DatasetBatches(Bare(), batch_size=3, shuffle=False, labelled=False)
    batches = list(src.epoch(_gen()))
    assert all(b.y is None for b in batches)
    assert torch.equal(torch.cat([b.idx for b in batches]), torch.arange(7))
    assert torch.equal(torch.cat([b.x for b in batches]), x)


def test_dataset_batches_empty():
    with pytest.raises(ValueError, match="empty"):
        DatasetBatches(torch.utils.data.TensorDataset(torch.zeros(0, 2)))
