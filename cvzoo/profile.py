"""Model size: true params, measured GMACs, and FLOPs in the seed tables' convention."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .card import ModelCard, get_card
from .models import build_model

SEED_FLOPS_FACTOR = 2 / 0.9  # the seeds' export script: thop MACs x 2 / 0.9 -> "flops(G)"


@dataclass(frozen=True)
class Profile:
    name: str
    input_size: int
    params_m: float  # every parameter, counted
    gmacs: float  # multiply-accumulates of conv/linear/matmul, measured by torch's FlopCounterMode
    thop_gmacs: float  # thop's count (also counts BN/activations/pools), the seeds' base number
    thop_params_m: float  # thop's params (leaf modules with a counting rule only)
    seed_flops_g: float  # thop_gmacs x 2 / 0.9, comparable with the seed tables' FLOPs column

    def as_dict(self) -> dict:
        return asdict(self)


def profile_model(name: str | ModelCard, size: Optional[int] = None) -> Profile:
    import thop
    from torch.utils.flop_counter import FlopCounterMode

    card = name if isinstance(name, ModelCard) else get_card(name)
    size = card.size_or_default(size)
    model = build_model(card)
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        macs, params = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    return Profile(
        name=card.name, input_size=size,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        gmacs=counter.get_total_flops() / 2 / 1e9,
        thop_gmacs=macs / 1e9, thop_params_m=params / 1e6,
        seed_flops_g=macs * SEED_FLOPS_FACTOR / 1e9,
    )
