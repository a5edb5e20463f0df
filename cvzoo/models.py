"""Model creation: timm architectures + our cards (+ the seed article's VoVNet-v1, built from timm blocks)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import timm
import torch
from timm.models import register_model
from timm.models.vovnet import VovNet

from .card import ModelCard, get_card


@register_model
def vovnet_v1(pretrained: bool = False, cfg: Optional[dict] = None, **kwargs) -> VovNet:
    """VoVNet-v1 of the seed article (stigma0617/VoVNet.pytorch), from timm's OSA blocks.

    timm's VovNet with `residual=True` adds the identity shortcut to the 2nd+ OSA block of each stage and
    puts MaxPool2d(3, 2, ceil_mode=True) before stages 3-5 — exactly the article's _OSA_stage. The stage
    layout comes from the model card (`arch_kwargs.cfg`).
    """
    if pretrained:
        raise ValueError("vovnet_v1 has no hub weights; pass a local checkpoint (--weights)")
    if cfg is None:
        raise ValueError("vovnet_v1 needs a cfg (stem/stage channels); use a cvzoo card such as vovnet39")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm factory bookkeeping
        kwargs.pop(key, None)
    return VovNet(cfg=dict(cfg), **kwargs)


def build_model(card: ModelCard, num_classes: Optional[int] = None, **kwargs) -> torch.nn.Module:
    """Random-init model for a card, in eval mode; `num_classes` and timm's keyword arguments override the card's."""
    model = timm.create_model(card.arch, pretrained=False, num_classes=num_classes or card.num_classes,
                              **{**card.arch_kwargs, **kwargs})
    return model.eval()


def set_bn_statistics(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
    """Give a random-init model data-like BatchNorm statistics (a cumulative average over `inputs`), so its
    activations and logits have the scale of a trained network: timm's init leaves mean 0 / var 1, and
    real photos then drive logits into the hundreds, where fidelity tolerances stop meaning anything."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(inputs)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def create_model(name: Union[str, ModelCard], weights: Union[None, str, Path] = None,
                 checkpoint_format: str = "auto", num_classes: Optional[int] = None, **kwargs) -> torch.nn.Module:
    """Build a zoo model; `weights` is a local checkpoint path, 'default' (the card's own weights) or None. As with
    timm's `pretrained=True, num_classes=N`: another number of classes gets a new, untrained classifier and the rest
    of the checkpoint loads strictly; other keyword arguments go to timm's model constructor."""
    from .checkpoint import load_weights, resolve_default_weights

    card = name if isinstance(name, ModelCard) else get_card(name)
    model = build_model(card, num_classes, **kwargs)
    if weights is not None:
        path = resolve_default_weights(card) if str(weights) == "default" else Path(weights)
        if model.num_classes == card.num_classes:
            load_weights(model, card, path, checkpoint_format=checkpoint_format)
        else:  # the checkpoint loads, checked whole, into the card's network; all but its classifier moves over
            full = build_model(card, **kwargs)
            load_weights(full, card, path, checkpoint_format=checkpoint_format)
            head, new = _classifier_keys(model), model.state_dict()
            model.load_state_dict({k: new[k] if k in head else v for k, v in full.state_dict().items()}, strict=True)
    return model


def _classifier_keys(model: torch.nn.Module) -> set[str]:
    """The state-dict keys of a timm model's classifier, whatever its module is called."""
    classifier = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is classifier)
    return {f"{prefix}.{k}" for k in classifier.state_dict()}
