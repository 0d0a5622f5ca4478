"""Random numbers as pure functions of a key: a counter-based integer hash, vectorised in torch.

Nothing here has state. ``hash_key(seed, i, v, ...)`` mixes the words of a key into 32 bits with an
avalanche permutation (C. Wellons' "lowbias32"), computed exactly in int64 on any device, so the
same key gives the same bits in any batch, order or process (big_vision / JAX-style key splitting
instead of a generator whose draws depend on what came before). :func:`uniform` and
:func:`beta_quantile` turn the bits into the distributions :mod:`ensemble_kd.views` needs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

M32 = 0xFFFFFFFF


def mul32(x, c: int):
    """(x * c) mod 2**32 for x in [0, 2**32), exact in int64 (no product reaches 2**63)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def mix32(x):
    """A 32-bit avalanche permutation (C. Wellons' "lowbias32"); tensors or Python ints."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_key(seed: int, *words) -> torch.Tensor | int:
    """A 32-bit hash of the key ``(seed, *words)``; each word an int or an int64 tensor in
    [0, 2**32), tensors broadcast. Returns values in [0, 2**32) (int64 for tensor words)."""
    h = mix32(mix32((seed & M32) ^ 0x9E3779B9) ^ (seed >> 32))
    for w in words:
        h = mix32(h ^ w)
    return h


def uniform(key: torch.Tensor, stream: int) -> torch.Tensor:
    """(B,) float64 uniforms in [0, 1) of the keys (B,) (from :func:`hash_key`) and a purpose."""
    return mix32(key ^ stream).double() / 2.0**32


_BETA_GRID = 4096  # cells of the tabulated Beta quantile on [0, 1/2]


@functools.lru_cache(maxsize=16)
def _beta_table(a: float) -> torch.Tensor:
    """Q(u)^a at u = k / (2 G), k = 0..G, for Q the Beta(a, a) quantile: (G + 1,) float64."""
    from scipy.special import betaincinv  # imported on first use: scipy loads slowly

    return torch.from_numpy(betaincinv(a, a, np.linspace(0.0, 0.5, _BETA_GRID + 1)) ** a)


def beta_quantile(a: float, u: torch.Tensor) -> torch.Tensor:
    """Beta(a, a) quantiles of the uniforms ``u`` (inverse CDF), float64.

    For a < 1 (mixup's usual range) ``betaincinv`` iterates for microseconds per value, a tenth of
    a small model's epoch, so Q(u)^a, nearly linear in u near 0, is interpolated in a table of
    4,097 exact values (error below 1e-6 for a >= 0.05) and Q(1 - u) = 1 - Q(u) gives the upper
    half; larger a use ``betaincinv`` itself.
    """
    if a > 1:
        from scipy.special import betaincinv

        return torch.from_numpy(betaincinv(a, a, u.numpy()))
    low = torch.minimum(u, 1.0 - u)  # in [0, 1/2]
    pos = low * (2 * _BETA_GRID)
    k = pos.floor().long().clamp_(max=_BETA_GRID - 1)
    table = _beta_table(float(a))
    q = torch.lerp(table[k], table[k + 1], pos - k) ** (1.0 / a)
    return torch.where(u <= 0.5, q, 1.0 - q)
