"""Batches sliced from tensors kept in memory, shuffled by a permutation.

For data of MNIST size a per-sample ``DataLoader`` costs more than the model, so the default source,
:class:`TensorBatches`, keeps the whole set as one tensor (on the training device) and slices it by a
``randperm``; augmentation (:func:`jitter`) acts on whole batches. :class:`MixedBatches` draws a fixed
share of every batch from a chosen subset of examples (the specialists' training mix), and
:class:`DatasetBatches` wraps a ``torch.utils.data.Dataset`` for data that does not fit in memory.

Every source yields :class:`Batch` items that carry the examples' positions (``idx``) in the
source, so a distillation objective can look the teachers' cached logits up by position;
:class:`ViewBatches` yields augmented views (:mod:`ensemble_kd.views`) with their view numbers, so
logits cached per view can be looked up too. An epoch is fully determined by the
``torch.Generator`` passed to :meth:`epoch`, which makes resumed runs reproduce uninterrupted ones
bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import torch

from .views import UNBOUNDED, EpochViews, Mix, ViewConfig, draw_views, pad_images


class Batch(NamedTuple):
    x: torch.Tensor  # (B, *input_shape) on the training device
    y: torch.Tensor | None  # (B,) int64, or None for unlabelled data
    idx: torch.Tensor  # (B,) int64 positions in the source (CPU)
    view: torch.Tensor | None = None  # (B,) int64 view numbers of augmented views (CPU), or None
    mix: Mix | None = None  # mixup/cutmix partners and weights; the hard targets are mixed too

    def rows(self, sl: slice) -> Batch:
        """The batch's rows ``sl`` (a shard of it), every field alike."""
        mix = None if self.mix is None else Mix(
            self.mix.partner[sl], self.mix.lam[sl],
            None if self.mix.partner_y is None else self.mix.partner_y[sl])
        return Batch(self.x[sl], None if self.y is None else self.y[sl], self.idx[sl],
                     None if self.view is None else self.view[sl], mix)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """N members' batches as one: x (N, B, ...), y, idx and view (N, B).

    Raises:
        ValueError: mixed views (the stacked members' loss does not mix labels).
    """
    if any(b.mix is not None for b in batches):
        raise ValueError("stacked (vectorised) members cannot train on mixup/cutmix views; "
                         "train them one after another")
    ys, views = [b.y for b in batches], [b.view for b in batches]
    return Batch(torch.stack([b.x for b in batches]),
                 None if any(y is None for y in ys) else torch.stack(ys),
                 torch.stack([b.idx for b in batches]),
                 None if any(v is None for v in views) else torch.stack(views))


class BatchSource(Protocol):
    """What :func:`ensemble_kd.train.train` iterates over."""

    def __len__(self) -> int: ...  # batches per epoch

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]: ...

    def to(self, device: torch.device) -> BatchSource: ...


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of a batch by a random integer offset in [-k, k] pixels (zero padded).

    Args:
        x: (B, C, H, W) images.
        max_shift: k >= 0, the largest shift in pixels along each axis.
        generator: CPU generator that draws the offsets.

    Returns:
        (B, C, H, W) shifted images.
    """
    if max_shift <= 0:
        return x
    if x.dim() != 4:
        raise ValueError(f"jitter needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    k = int(max_shift)
    off = torch.randint(0, 2 * k + 1, (2, b), generator=generator).to(x.device)  # (2, B)
    padded = torch.nn.functional.pad(x, (k, k, k, k))  # (B, C, H+2k, W+2k)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class TensorBatches:
    """Mini-batches of in-memory tensors, shuffled each epoch by a permutation.

    Args:
        x: (N, *input_shape) inputs.
        y: (N,) int64 labels, or None (unlabelled transfer set).
        batch_size: examples per batch.
        shuffle: draw a new permutation each epoch (False: the original order).
        jitter: largest random shift in pixels applied to each training batch (images only).
        drop_last: drop the last, smaller batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int = 128,
        shuffle: bool = True,
        jitter: int = 0,
        drop_last: bool = False,
    ):
        if len(x) == 0:
            raise ValueError("cannot make batches from an empty data set")
        if y is not None and len(y) != len(x):
            raise ValueError(f"inputs have {len(x)} rows but labels have {len(y)}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("the inputs contain non-finite values (nan or inf)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if jitter and x.dim() != 4:
            raise ValueError(
                f"jitter needs image inputs (N, C, H, W); these inputs have shape {tuple(x.shape)}"
            )
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.jitter, self.drop_last = (
            int(batch_size),
            shuffle,
            int(jitter),
            drop_last,
        )

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def to(self, device: torch.device) -> TensorBatches:
        out = TensorBatches.__new__(TensorBatches)
        out.__dict__.update(self.__dict__)
        out.x = self.x.to(device)
        out.y = None if self.y is None else self.y.to(device)
        return out

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        n = len(self.x)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._batch(idx, generator)

    def _batch(self, idx: torch.Tensor, generator: torch.Generator) -> Batch:
        dev_idx = idx.to(self.x.device)
        x = self.x.index_select(0, dev_idx)  # several times faster than x[idx] on the CPU
        if self.jitter:
            x = jitter(x, self.jitter, generator)
        return Batch(x, None if self.y is None else self.y.index_select(0, dev_idx), idx)


class MixedBatches(TensorBatches):
    """Batches with a fixed share of examples drawn from a chosen subset (the rest from the others).

    Used to train specialists: ``share`` of each batch comes from the examples whose ``mask`` is True
    (the specialist's classes), the rest from the other examples. Both pools are visited in a fresh
    permutation each epoch, cycling when exhausted; an epoch is one pass over the masked pool.

    Args:
        x: (N, *input_shape); y: (N,) labels.
        mask: (N,) bool, the examples of the special subset.
        share: fraction of each batch from the masked pool, in (0, 1).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        mask: torch.Tensor,
        *,
        share: float = 0.5,
        batch_size: int = 128,
        jitter: int = 0,
    ):
        super().__init__(x, y, batch_size=batch_size, jitter=jitter)
        if not 0.0 < share < 1.0:
            raise ValueError(f"share must lie strictly between 0 and 1, got {share}")
        mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
        if mask.shape != (len(x),):
            raise ValueError(f"mask must have shape ({len(x)},), got {tuple(mask.shape)}")
        self.inside = mask.nonzero().flatten()
        self.outside = (~mask).nonzero().flatten()
        if len(self.inside) == 0 or len(self.outside) == 0:
            raise ValueError("the subset must have examples both inside and outside it")
        self.share = float(share)
        self.n_in = max(1, min(self.batch_size - 1, round(self.share * self.batch_size)))

    def __len__(self) -> int:
        return math.ceil(len(self.inside) / self.n_in)

    def to(self, device: torch.device) -> MixedBatches:
        out = super().to(device)
        out.__class__ = MixedBatches
        return out

    @property
    def training_share(self) -> float:
        """Share of subset examples in a training batch (after rounding to whole examples)."""
        return self.n_in / self.batch_size

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        n_out = self.batch_size - self.n_in
        steps = len(self)
        ins = self._cycled(self.inside, steps * self.n_in, generator)
        outs = self._cycled(self.outside, steps * n_out, generator)
        for i in range(steps):
            idx = torch.cat(
                [ins[i * self.n_in : (i + 1) * self.n_in], outs[i * n_out : (i + 1) * n_out]]
            )
            yield self._batch(idx, generator)

    @staticmethod
    def _cycled(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        reps = math.ceil(n / len(pool))
        perms = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(reps)]
        return torch.cat(perms)[:n]


class ViewBatches(TensorBatches):
    """Batches of augmented views (:mod:`ensemble_kd.views`), every example once per epoch.

    Each epoch draws its permutation, then one view number per example (uniform in [0, V), or in
    [0, 2**31) for unbounded views) from the epoch's generator: epochs see different views, and a
    resumed run the same ones. The views themselves are regenerated from their keys, so example i
    in view v is exactly the input the teachers' view cache holds logits for. Batches carry
    ``view`` and, when mixing, ``mix`` with the partners' labels (the hard targets are mixed too).
    With crops or shifts, a padded copy of the inputs is kept.

    Args:
        x: (N, *input_shape) inputs (mixup partners come from all of them).
        y: (N,) int64 labels, or None (unlabelled transfer set).
        views: the view settings (checked against ``x``'s shape).
        batch_size, shuffle, drop_last: as for :class:`TensorBatches`.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        views: ViewConfig,
        batch_size: int = 128,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        super().__init__(x, y, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
        self.views = views.validate(tuple(x.shape[1:]))
        # the inputs padded once for crops or shifts (a second copy): faster than every batch
        self.padded = pad_images(x, self.views)

    def to(self, device: torch.device) -> ViewBatches:
        out = super().to(device)
        out.__class__ = ViewBatches
        out.padded = None if self.padded is None else self.padded.to(device)
        return out

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        n, cfg = len(self.x), self.views
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        view = torch.randint(0, cfg.views or UNBOUNDED, (n,), generator=generator)  # (N,)
        # the whole epoch's draws at once, in batch order: hashing per batch would cost more than
        # the model's step, and each batch is then a slice
        view = view[order]  # (N,) view of the epoch's i-th example
        hw = tuple(self.x.shape[-2:]) if self.x.dim() == 4 else None
        draws = draw_views(order, view, n, cfg, hw)
        views = EpochViews(self.x, order, view, draws, cfg, self.padded)
        # the labels of the epoch's examples and partners, in batch order (each batch a slice)
        ys = None if self.y is None else self.y.index_select(0, order.to(self.y.device))
        partner_ys = (None if self.y is None or draws.partner is None
                      else self.y.index_select(0, draws.partner.to(self.y.device)))
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx, v = order[sl], view[sl]
            x, mix = views.batch(sl)
            y = None if ys is None else ys[sl]
            if mix is not None and partner_ys is not None:
                mix = mix._replace(partner_y=partner_ys[sl])
            yield Batch(x, y, idx, v, mix)


class _Indexed(torch.utils.data.Dataset):
    """Wraps a dataset of ``(x, y)`` or ``x`` items to also return the item's index."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        if isinstance(item, (tuple, list)):
            x, y = item[0], item[1] if len(item) > 1 else -1
        else:
            x, y = item, -1
        return x, torch.as_tensor(y, dtype=torch.long), i


class DatasetBatches:
    """Batches from a ``torch.utils.data.Dataset`` (for data that does not fit in memory).

    Items are ``(x, y)`` pairs (or bare ``x`` for unlabelled data). Shuffling uses the generator
    passed to :meth:`epoch`, so runs stay reproducible; ``num_workers`` loads in parallel.
    """

    def __init__(
        self,
        dataset,
        *,
        batch_size: int = 128,
        shuffle: bool = True,
        jitter: int = 0,
        num_workers: int = 0,
        labelled: bool = True,
    ):
        if len(dataset) == 0:
            raise ValueError("cannot make batches from an empty data set")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), shuffle
        self.jitter, self.num_workers, self.labelled = int(jitter), num_workers, labelled
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def to(self, device: torch.device) -> DatasetBatches:
        out = DatasetBatches.__new__(DatasetBatches)
        out.__dict__.update(self.__dict__)
        out.device = torch.device(device)
        return out

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        loader = torch.utils.data.DataLoader(
            _Indexed(self.dataset),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.num_workers,
        )
        for x, y, idx in loader:
            x = x.to(self.device, non_blocking=True)
            if self.jitter:
                x = jitter(x, self.jitter, generator)
            yield Batch(x, y.to(self.device) if self.labelled else None, idx.long())
