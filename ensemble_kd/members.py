"""What the training loop trains: one model, or N members stepped by one optimiser.

:func:`ensemble_kd.train.train_members` is written once for N >= 1 members. A single model is one
member (:class:`SingleModel`); a vectorised ensemble is N members whose weights are stacked
(:class:`ensemble_kd.vectorized.StackedModels`). Both satisfy :class:`Members`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .predict import predict_logits


class Members(Protocol):
    """What the loop trains: N >= 1 members stepped by one optimiser.

    A single model is one member (:class:`SingleModel`); a vectorised ensemble is N members whose
    weights are stacked (:class:`ensemble_kd.vectorized.StackedModels`). The loop is the same.
    """

    n: int  # number of members

    def parameters(self) -> Iterable[torch.Tensor]: ...  # what the optimiser updates

    def train(self, mode: bool = True) -> Any: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # the batch's logits

    def val_logits(self, x: torch.Tensor, device: torch.device) -> torch.Tensor: ...  # (N, M, C)

    def member_state(self, k: int) -> dict: ...  # member k's weights, on the CPU

    def load_member_state(self, k: int, state: dict) -> None: ...

    def member_optimizer_state(self, state: dict, k: int) -> dict: ...  # k's slice, on the CPU

    def stacked_optimizer_state(self, states: Sequence[dict]) -> dict: ...  # inverse of the above

    def models(self) -> list[nn.Module]: ...  # the members as modules (after load_member_state)


class SingleModel:
    """One model as the loop's single member (optionally run through DDP)."""

    n = 1

    def __init__(self, model: nn.Module, net: nn.Module | None = None):
        self.model = model
        self.net = net if net is not None else model  # what the forward runs through

    def parameters(self) -> Iterable[torch.Tensor]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> SingleModel:
        self.model.train(mode)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C)

    def val_logits(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return predict_logits(self.model, x, device=device)[None]  # (1, M, C)

    def member_state(self, k: int) -> dict:
        return {name: t.detach().cpu().clone() for name, t in self.model.state_dict().items()}

    def load_member_state(self, k: int, state: dict) -> None:
        self.model.load_state_dict(state)

    def member_optimizer_state(self, state: dict, k: int) -> dict:
        return state

    def stacked_optimizer_state(self, states: Sequence[dict]) -> dict:
        return states[0]

    def models(self) -> list[nn.Module]:
        return [self.model]


