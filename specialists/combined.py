"""Generalist + specialists as one module whose outputs are ``log q``, so that q can be cached.

``q`` is the exact combined distribution of :func:`specialists.combine.combine_predictions`: the
generalist's distribution where no specialist is active (the ``top_n`` rule), the minimiser of
``KL(p_g || q) + sum_m KL(p_m || A_m q)`` elsewhere. :class:`CombinedModel` returns ``log q`` as
its "logits": ``softmax(log q / T)`` is q sharpened or softened at temperature T, and exactly q at
T = 1, which is what the distillation loss expects of a teacher.

Wrapped as a module, the combination goes through the teacher-output cache
(:mod:`ensemble_kd.cache`) unchanged: computed once over the transfer set, chunk by chunk,
memory-mapped or streamed when read, and fingerprinted by :func:`q_fingerprint` -- every weight of
the generalist and the specialists (dustbin corrections included), the subsets, ``top_n`` and the
transfer inputs -- so a q-cache of other models is never read as this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ensemble_kd.cache import cache_fingerprint, inputs_fingerprint, teachers_fingerprint
from ensemble_kd.views import ViewConfig

from .combine import combine_predictions
from .subsets import validate_subsets

__all__ = ["CombinedModel", "q_fingerprint"]

# log q of a class with q = 0 (the generalist's softmax underflowed there): the cache holds finite
# logits only, and exp(-87) is below anything a float32 softmax can tell from 0.
_LOG_FLOOR = float(torch.log(torch.tensor(torch.finfo(torch.float32).tiny)))


class CombinedModel(nn.Module):
    """``x (B, *input_shape) -> log q (B, C)``: the generalist combined with its active specialists.

    Args:
        generalist: maps inputs to C logits.
        specialists: M models, the m-th mapping inputs to ``len(subsets[m]) + 1`` logits (subset
            classes in order, dustbin last, dustbin correction already in the bias); may be empty
            (then q is the generalist's distribution).
        subsets: the M subsets, class indices in [0, C).
        top_n: specialist m is active for an example when ``subsets[m]`` holds one of the
            generalist's ``top_n`` classes (None: always), as at inference.
    """

    def __init__(self, generalist: nn.Module, specialists: Sequence[nn.Module],
                 subsets: Sequence[Sequence[int]], top_n: int | None = 1):
        super().__init__()
        if len(specialists) != len(subsets):
            raise ValueError(f"{len(specialists)} specialists for {len(subsets)} subsets")
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.subsets = [[int(c) for c in s] for s in subsets]
        self.top_n = top_n
        # what teachers_fingerprint hashes beside the weights: the combination rule
        self.spec = {
            "name": "specialists.combined",
            "generalist": getattr(generalist, "spec", type(generalist).__name__),
            "specialists": [getattr(m, "spec", type(m).__name__) for m in specialists],
            "subsets": self.subsets,
            "top_n": top_n,
        }

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in) -> (B, C)
        p_g = torch.softmax(self.generalist(x).float(), -1)  # (B, C)
        if self.subsets:
            validate_subsets(self.subsets, p_g.shape[-1])
            p_ms = [torch.softmax(m(x).float(), -1) for m in self.specialists]  # (B, |S_m| + 1)
            p_g = combine_predictions(p_g, p_ms, self.subsets, top_n=self.top_n)
        return p_g.clamp_min(torch.finfo(torch.float32).tiny).log()


def q_fingerprint(combined: CombinedModel, x: torch.Tensor, dtype: str = "float32",
                  views: ViewConfig | None = None) -> str:
    """The fingerprint of the q-cache of ``combined`` over inputs ``x`` (N, ...) (or their
    ``views``) stored as ``dtype``: the one :func:`ensemble_kd.cache.ensure_cache` computes for it
    as a teacher."""
    return cache_fingerprint(teachers_fingerprint([combined]), inputs_fingerprint(x), dtype, 0,
                             views)
