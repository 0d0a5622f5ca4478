"""Augmented views of the transfer set, each a pure function of (example, view number, seed).

A *view* is one augmented version of an example: random translation (``shift``, zero fill), a
random crop of the reflect-padded image (``crop_padding``), a horizontal flip (``flip``), mixup or
cutmix with a partner example, and Gaussian input noise (``noise``). The distilled student and its
teachers must see the same input, and a teacher cache must be able to store the teachers' logits
for it, so nothing here draws from a stateful generator: every random number is a counter-based
hash of the key ``(seed, example i, view v, purpose)`` (:mod:`ensemble_kd.keyed`). The
view ``(i, v)`` therefore comes out bit for bit the same in whatever batch, order or process it is
regenerated (on one device; on another, mixed and noisy views may differ in the last bit).

Mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) pair example i with a partner j, itself a
hash of ``(i, v, seed)`` over the whole set of N examples, taken in its own view ``(j, v)``; the
weight ``lam`` of example i is Beta(a, a) distributed (inverse CDF of the hashed uniform). With
both on, each example is mixed by one of the two, chosen by a fair hashed coin. The labels of a
mixed view are ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)`` (:func:`ensemble_kd.losses.mixed_targets`).

Order of the transforms: crop, shift, flip (each example and its partner on their own keys), then
mixing, then noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .keyed import beta_quantile, hash_key, uniform

# Purposes of the hashed draws: one independent stream each.
_CROP_Y, _CROP_X, _SHIFT_Y, _SHIFT_X, _FLIP = 1, 2, 3, 4, 5
_PARTNER, _KIND, _MIX_LAM, _CUT_LAM, _CUT_Y, _CUT_X, _NOISE_A, _NOISE_B = 6, 7, 8, 9, 10, 11, 12, 13
UNBOUNDED = 2**31  # view numbers drawn when ``views`` is None (online teachers only)


@dataclass
class ViewConfig:
    """Which augmented views of the transfer set the student and its teachers see.

    Every setting at its default is "no augmentation, one view": today's plain transfer set.
    """

    shift: int = 0  # largest random translation in pixels along each axis (zero fill); images
    crop_padding: int = 0  # random crop of the image reflect-padded by this many pixels; images
    flip: bool = False  # random horizontal flip; opt-in, wrong for digits and text; images
    mixup: float = 0.0  # Beta(a, a) parameter of mixup's weight; 0 = off (0.2-1 is usual)
    cutmix: float = 0.0  # Beta(a, a) parameter of cutmix's kept area; 0 = off (1 is usual); images
    noise: float = 0.0  # standard deviation of Gaussian input noise (for non-image data); 0 = off
    # V: the views per example a teacher cache holds (each epoch draws one per example);
    # None = unbounded, a fresh view each epoch (online teachers only)
    views: int | None = 1
    seed: int = 0  # key of every draw: same seed, same views (independent of the training seed)

    @property
    def augments(self) -> bool:
        """Whether any transform is on (else every view is the example itself)."""
        return bool(self.shift or self.crop_padding or self.flip or self.mixes or self.noise)

    @property
    def mixes(self) -> bool:
        """Whether views mix two examples (mixup or cutmix), so labels are mixed too."""
        return self.mixup > 0 or self.cutmix > 0

    def settings_text(self) -> str:
        """The settings that are on, e.g. ``"shift=1, mixup=0.2, views=8"`` (seed left out)."""
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items()
                         if v not in (0, 0.0, False, None) and k != "seed")

    @property
    def plain(self) -> bool:
        """One view without augmentation: the transfer set itself (today's cache and batches)."""
        return not self.augments and self.views == 1

    def as_dict(self) -> dict:
        """The settings as JSON-able values of fixed types (for fingerprints and run identities:
        ``mixup=1`` and ``mixup=1.0`` are one setting)."""
        out = dataclasses.asdict(self)
        for name in ("mixup", "cutmix", "noise"):
            out[name] = float(out[name])
        out["flip"] = bool(out["flip"])
        return out

    def validate(self, input_shape: tuple[int, ...] | None = None) -> ViewConfig:
        """Check the settings (and, given ``input_shape``, that they fit the data); return self.

        Args:
            input_shape: one example's shape, e.g. (C, H, W) for images; None skips the checks
                that depend on the data.

        Raises:
            ValueError: one line naming the setting: negative or non-integer sizes, a negative or
                non-finite mixup/cutmix parameter or noise level, V < 1, several views without
                any augmentation (all alike), or an image transform on inputs that are not images.
        """
        for name in ("shift", "crop_padding", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"views: {name} must be an integer >= 0, got {v!r}")
        if self.seed >= 2**63:
            raise ValueError(f"views: seed must be < 2**63, got {self.seed}")
        for name in ("mixup", "cutmix", "noise"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                what = "a Beta parameter > 0 (0 = off)" if name != "noise" else "a std >= 0"
                raise ValueError(f"views: {name} must be {what}, got {v!r}")
        if self.views is not None:
            if (isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1
                    or self.views > UNBOUNDED):
                raise ValueError(f"views: the number of views V must be an integer >= 1 (or None: "
                                 f"unbounded), got {self.views!r}")
            if self.views > 1 and not self.augments:
                raise ValueError(f"views: {self.views} views without any augmentation would all be "
                                 "the same input; turn an augmentation on or use 1 view")
        elif not self.augments:
            raise ValueError("views: unbounded views (None) without any augmentation would all be "
                             "the same input; turn an augmentation on")
        if input_shape is None:
            return self
        image = len(input_shape) == 3
        needs_image = [n for n in ("shift", "crop_padding", "flip", "cutmix") if getattr(self, n)]
        if needs_image and not image:
            raise ValueError(
                f"views: {' and '.join(needs_image)} need{'s' if len(needs_image) == 1 else ''} "
                f"image inputs (C, H, W), but one example has "
                f"shape {tuple(input_shape)}; use mixup or noise for such data"
            )
        if self.crop_padding and self.crop_padding >= min(input_shape[1:]):
            raise ValueError(f"views: crop_padding must be smaller than the image side "
                             f"({min(input_shape[1:])} px), got {self.crop_padding}")
        return self


class Mix(NamedTuple):
    """How each view of a batch was mixed: view = lam * example + (1 - lam) * partner."""

    partner: torch.Tensor  # (B,) int64 positions of the partners in the source (CPU)
    lam: torch.Tensor  # (B,) float32 weight (share of the area for cutmix) of the example itself
    partner_y: torch.Tensor | None = None  # (B,) int64 labels of the partners (set by the source)


class _Geometry(NamedTuple):
    crop: torch.Tensor | None  # (2, B) int64 offsets in [-p, p] (rows, columns)
    shift: torch.Tensor | None  # (2, B) int64 offsets in [-k, k]
    flip: torch.Tensor | None  # (B,) bool


class ViewDraws(NamedTuple):
    """Every random number of a batch of views (CPU tensors), drawn by :func:`draw_views`."""

    geometry: _Geometry  # of the examples themselves
    partner: torch.Tensor | None  # (B,) int64 positions, when mixing
    partner_geometry: _Geometry | None  # of the partners, on their own keys (partner, v)
    lam: torch.Tensor | None  # (B,) float32 weight of the example itself
    box: torch.Tensor | None  # (4, B) int64 cutmix box [y0, y1) x [x0, x1); empty for mixup rows

    def take(self, pos: torch.Tensor | slice) -> ViewDraws:
        """The draws of rows ``pos`` (B',) (or a slice) of this batch."""
        return _take(self, pos)


def _take(obj, pos: torch.Tensor | slice):
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj[..., pos] if isinstance(pos, slice) else obj.index_select(-1, pos)
    return type(obj)(*(_take(v, pos) for v in obj))


# ---------------------------------------------------------------- the draws (CPU), from the keys


def _offsets(key: torch.Tensor, k: int, streams: tuple[int, int]) -> torch.Tensor:
    """(2, B) int64 offsets, each uniform in [-k, k]."""
    return torch.stack([(uniform(key, s) * (2 * k + 1)).long() - k for s in streams])


def _geometry(cfg: ViewConfig, key: torch.Tensor) -> _Geometry:
    return _Geometry(
        _offsets(key, cfg.crop_padding, (_CROP_Y, _CROP_X)) if cfg.crop_padding else None,
        _offsets(key, cfg.shift, (_SHIFT_Y, _SHIFT_X)) if cfg.shift else None,
        uniform(key, _FLIP) < 0.5 if cfg.flip else None,
    )


def draw_views(
    idx: torch.Tensor, view: torch.Tensor, n_examples: int, cfg: ViewConfig, image_hw=None
) -> ViewDraws:
    """Every random number of the views ``(idx[b], view[b])``: a pure function of the keys.

    Args:
        idx: (B,) int64 positions of the examples in the set of ``n_examples``.
        view: (B,) int64 view numbers in [0, 2**32).
        n_examples: N, the size of the set the partners are drawn from.
        cfg: the view settings.
        image_hw: (H, W) of images (needed for cutmix).
    """
    idx, view = idx.cpu().long(), view.cpu().long()
    key = hash_key(cfg.seed, idx, view)  # (B,) every draw below hashes it with its purpose
    geometry = _geometry(cfg, key)
    if not cfg.mixes:
        return ViewDraws(geometry, None, None, None, None)
    partner = (uniform(key, _PARTNER) * n_examples).long().clamp_(max=n_examples - 1)
    lam = torch.ones(len(idx), dtype=torch.float64)
    cut = torch.zeros(len(idx), dtype=torch.bool)
    if cfg.cutmix > 0:
        cut = uniform(key, _KIND) < 0.5 if cfg.mixup > 0 else ~cut
    if cfg.mixup > 0:
        lam = torch.where(cut, lam, beta_quantile(cfg.mixup, uniform(key, _MIX_LAM)))
    box = None
    if cfg.cutmix > 0:
        h, w = image_hw
        ratio = (1.0 - beta_quantile(cfg.cutmix, uniform(key, _CUT_LAM))).sqrt()  # side share
        ch, cw = (h * ratio).long(), (w * ratio).long()  # the box's sides (timm's rand_bbox)
        cy = (uniform(key, _CUT_Y) * h).long()
        cx = (uniform(key, _CUT_X) * w).long()
        box = torch.stack([(cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h),
                           (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)])
        box = torch.where(cut, box, 0)  # (4, B); an empty box leaves mixup rows alone
        area = (box[1] - box[0]) * (box[3] - box[2])
        lam = torch.where(cut, 1.0 - area.double() / (h * w), lam)  # the share actually kept
    return ViewDraws(geometry, partner, _geometry(cfg, hash_key(cfg.seed, partner, view)), lam.float(), box)


# --------------------------------------------------------------------------- applying the draws


def _first_offsets(g: _Geometry) -> torch.Tensor | None:
    """The offsets (2, B) of the first translation (crop, else shift), or None without one."""
    return g.crop if g.crop is not None else g.shift


def _first_padding(cfg: ViewConfig) -> tuple[int, str] | None:
    """(pixels, mode) of the first translation (crop, else shift), or None without one."""
    if cfg.crop_padding:
        return cfg.crop_padding, "reflect"
    return (cfg.shift, "constant") if cfg.shift else None


def pad_images(x: torch.Tensor, cfg: ViewConfig) -> torch.Tensor | None:
    """Images (N, C, H, W) padded for the views' first translation, or None without one.

    Made once, it saves :func:`apply_views` padding every batch (a copy of the inputs' size).
    """
    first = _first_padding(cfg)
    if first is None:
        return None
    p, mode = first
    return F.pad(x, (p, p, p, p), mode=mode)


def _window_table(padded: torch.Tensor, pad: int) -> torch.Tensor:
    """Every (C, H, W) window of the padded images (M, C, H + 2p, W + 2p), as rows of one view.

    A window may start at any element of the padded images: as a view (no copy), windows are rows
    of one (L, C, H, W) tensor, and one index_select (a fast row copy) picks each image's own.
    """
    _, c, hp, wp = padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    span = (c - 1) * hp * wp + (h - 1) * wp + w  # elements from a window's first to its last
    return padded.contiguous().as_strided((padded.numel() - span + 1, c, h, w), (1, hp * wp, wp, 1))


def _window_starts(padded: torch.Tensor, which: torch.Tensor, off: torch.Tensor, pad: int
                   ) -> torch.Tensor:
    """Rows (B,) of :func:`_window_table` holding images ``which`` (B,) translated by ``off``
    (2, B) in [-p, p]."""
    _, c, hp, wp = padded.shape
    off = off.to(padded.device) + pad  # (2, B) in [0, 2p]
    return which.to(padded.device) * (c * hp * wp) + off[0] * wp + off[1]


def _windows(padded: torch.Tensor, which: torch.Tensor, off: torch.Tensor, pad: int) -> torch.Tensor:
    """Images ``which`` (B,) of ``padded`` (M, C, H + 2p, W + 2p), each cut to (C, H, W) at its
    offset ``off`` (2, B) in [-p, p]: the image translated by ``off``, filled as padded."""
    return _window_table(padded, pad).index_select(0, _window_starts(padded, which, off, pad))


class EpochViews:
    """The views of a whole epoch's draws, cut batch by batch with the fewest operations.

    For the common views (one translation, crop or shift, optionally mixed up; no flips, cutmix
    or noise) every image's window in the padded inputs is located once per epoch, so a batch is
    one or two row copies and a blend: the same values as :func:`apply_views` (same operations on
    the same numbers). Other views fall back to :func:`apply_views` batch by batch.

    Args:
        x_all: (N, *input_shape) the set; ``padded``: :func:`pad_images` of it (or None).
        idx, view: (M,) the epoch's examples and view numbers, in batch order.
        draws: ``draw_views(idx, view, ...)``; cfg: the view settings.
    """

    def __init__(self, x_all: torch.Tensor, idx: torch.Tensor, view: torch.Tensor,
                 draws: ViewDraws, cfg: ViewConfig, padded: torch.Tensor | None):
        self.x_all, self.idx, self.view, self.draws, self.cfg = x_all, idx, view, draws, cfg
        self.padded = padded
        g = draws.geometry
        self.fast = (padded is not None and not cfg.flip and not cfg.cutmix and not cfg.noise
                     and (g.crop is None) != (g.shift is None))
        if self.fast:
            pad = _first_padding(cfg)[0]
            self.table = _window_table(padded, pad)
            self.starts = _window_starts(padded, idx, _first_offsets(g), pad)  # (M,)
            if draws.partner is not None:
                self.partner_starts = _window_starts(
                    padded, draws.partner, _first_offsets(draws.partner_geometry), pad)
                self.lam = draws.lam.to(padded.device)

    def batch(self, sl: slice) -> tuple[torch.Tensor, Mix | None]:
        """The views of positions ``sl`` of the epoch: (B, *input_shape), :class:`Mix` or None."""
        if not self.fast:
            return apply_views(self.x_all, self.idx[sl], self.view[sl], self.draws.take(sl),
                               self.cfg, self.padded)
        x = self.table.index_select(0, self.starts[sl])
        if self.draws.partner is None:
            return x, None
        xp = self.table.index_select(0, self.partner_starts[sl])
        lam = self.lam[sl]
        mixed = torch.lerp(xp, x, lam.view(-1, *[1] * (x.dim() - 1)))  # lam x + (1 - lam) xp
        return mixed, Mix(self.draws.partner[sl], lam)


def _translate(x: torch.Tensor, off: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """x (B, C, H, W) translated by per-image offsets (2, B) in [-pad, pad], filled by ``mode``."""
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)  # (B, C, H + 2p, W + 2p)
    return _windows(padded, torch.arange(len(x), device=x.device), off, pad)


def _geometric(
    x_all: torch.Tensor, which: torch.Tensor, g: _Geometry, cfg: ViewConfig,
    padded: torch.Tensor | None,
) -> torch.Tensor:
    """Examples ``which`` (B,) of ``x_all`` cropped, shifted and flipped as ``g`` says.

    ``padded``: :func:`pad_images` of ``x_all``, or None (each batch is padded).
    """
    crop, shift = g.crop, g.shift
    first = _first_offsets(g)
    if padded is not None and first is not None:  # the first translation straight from padded
        x = _windows(padded, which, first, _first_padding(cfg)[0])
        crop, shift = None, (shift if crop is not None else None)
    else:
        x = x_all.index_select(0, which.to(x_all.device))
    if crop is not None:
        x = _translate(x, crop, cfg.crop_padding, "reflect")
    if shift is not None:
        x = _translate(x, shift, cfg.shift, "constant")
    if g.flip is not None:
        x = torch.where(g.flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    return x


def _noise(shape, seed: int, idx: torch.Tensor, view: torch.Tensor, device) -> torch.Tensor:
    """Standard normal noise (B, *shape) keyed by (seed, example, view, element): Box-Muller."""
    d = math.prod(shape)
    e = torch.arange(d, device=device)[None, :]  # (1, D) element counters
    i, v = idx.to(device)[:, None], view.to(device)[:, None]
    u1 = (hash_key(seed, i, v, _NOISE_A, e).double() + 1.0) / 2.0**32  # (B, D) in (0, 1]
    u2 = hash_key(seed, i, v, _NOISE_B, e).double() / 2.0**32
    z = (-2.0 * u1.log()).sqrt() * torch.cos(2.0 * math.pi * u2)
    return z.float().view(len(idx), *shape)


def apply_views(
    x_all: torch.Tensor, idx: torch.Tensor, view: torch.Tensor, draws: ViewDraws, cfg: ViewConfig,
    padded: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Mix | None]:
    """The views ``(idx, view)`` of ``x_all`` given their :func:`draw_views` draws.

    Args:
        x_all, idx, view, cfg: as for :func:`make_views`.
        draws: ``draw_views(idx, view, ...)``.
        padded: ``pad_images(x_all, cfg)`` made once (faster), or None (the same views).

    Returns:
        (views (B, *input_shape) on ``x_all``'s device, :class:`Mix` or None when not mixing).
    """
    dev, b = x_all.device, len(idx)
    mix = None
    if draws.partner is None:
        x = _geometric(x_all, idx, draws.geometry, cfg, padded)
    else:  # the examples and their partners in one pass: (2B, ...)
        both = torch.cat([idx, draws.partner])
        geometry = _Geometry(*(None if g is None else torch.cat([g, gp], -1)
                               for g, gp in zip(draws.geometry, draws.partner_geometry, strict=True)))
        x, xp = _geometric(x_all, both, geometry, cfg, padded).split(b)
        lam = draws.lam.to(dev)
        mixed = torch.lerp(xp, x, lam.view(-1, *[1] * (x.dim() - 1)))  # lam x + (1 - lam) xp
        if draws.box is not None:
            box = draws.box.to(dev)
            h, w = x.shape[-2:]
            rows = torch.arange(h, device=dev)[None, :]
            cols = torch.arange(w, device=dev)[None, :]
            in_rows = (rows >= box[0][:, None]) & (rows < box[1][:, None])  # (B, H)
            in_cols = (cols >= box[2][:, None]) & (cols < box[3][:, None])  # (B, W)
            inside = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
            cut = (box[1] > box[0])[:, None, None, None]  # rows mixed by cutmix
            mixed = torch.where(cut, torch.where(inside, xp, x), mixed)
        x, mix = mixed, Mix(draws.partner, lam)
    if cfg.noise:
        x = x + cfg.noise * _noise(x.shape[1:], cfg.seed, idx, view, dev)
    return x, mix


def make_views(
    x_all: torch.Tensor, idx: torch.Tensor, view: torch.Tensor, cfg: ViewConfig
) -> tuple[torch.Tensor, Mix | None]:
    """Views ``(idx[b], view[b])`` of the examples ``x_all`` (N, ...): pure functions of the keys.

    Args:
        x_all: (N, *input_shape) the whole set (partners come from it).
        idx: (B,) int64 positions in ``x_all``.
        view: (B,) int64 view numbers.
        cfg: the view settings (validated for ``x_all``'s shape by the caller).

    Returns:
        (views (B, *input_shape) on ``x_all``'s device, :class:`Mix` (partner positions and the
        example's weight ``lam``) or None when the settings do not mix).
    """
    idx, view = torch.as_tensor(idx).long().cpu(), torch.as_tensor(view).long().cpu()
    draws = draw_views(idx, view, len(x_all), cfg, tuple(x_all.shape[-2:]))
    return apply_views(x_all, idx, view, draws, cfg)


class ViewRows:
    """The V x N views of a set as rows ``v * N + i`` (view v of example i), made on demand.

    Sliced like a tensor (``rows[a:b]`` -> (b - a, *input_shape)), so a teacher cache can be
    written from it chunk by chunk without holding all V * N views in memory.
    """

    def __init__(self, x: torch.Tensor, cfg: ViewConfig):
        if cfg.views is None:
            raise ValueError("a view cache needs a finite number of views V (views=None is online only)")
        self.x, self.cfg, self.n = x, cfg, len(x)

    def __len__(self) -> int:
        return self.cfg.views * self.n

    def __getitem__(self, rows: slice) -> torch.Tensor:
        r = torch.arange(*rows.indices(len(self)))
        return make_views(self.x, r % self.n, r // self.n, self.cfg)[0]
