"""The MLP members that E4, E5 and E6 build on: E4's teacher and 100% baseline, E5's and E6's
generalists.

Ten MLPs of one architecture and recipe (``members_*`` settings), member k trained on hard labels
from seed k with view seed k, in ``out/members/member_k``. They were E3's ensemble in the first
full run; E3 now has an ensemble of its own (``e3_arch``), because ten such MLPs gained only 0.27
points over their mean member (``presets.E3_PILOT_NOTE``), while E4-E6 measure something else
(soft targets on 3% of the data, specialists) and keep these members and their results.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ensemble_kd import ModelSpec

from . import presets
from .common import Context, widths_name

FOLDER = "members"
PREFIX = "members_"  # the settings a members folder is claimed with


def member_folder(ctx: Context, k: int) -> Path:
    return ctx.out / FOLDER / f"member_{k}"


def spec(ctx: Context) -> ModelSpec:
    """The members' model, also that of E4's 3% students."""
    p = ctx.preset
    return ModelSpec("mlp", p.members_widths, p.members_dropout)


def mlp_members(ctx: Context) -> list[nn.Module]:
    """The ``members_count`` members (trained on first use, loaded after)."""
    ctx.claim(FOLDER, (PREFIX,))
    p = ctx.preset
    return [ctx.hard_model(member_folder(ctx, k), spec(ctx), k, p.members_epochs,
                           views=presets.views(p.members_views, None, seed=k),
                           label=f"MLP member {k + 1}/{p.members_count} "
                                 f"{widths_name(p.members_widths)}")
            for k in range(p.members_count)]
