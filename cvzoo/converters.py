"""Checkpoint key-layout converters: foreign state dict -> the timm model's state dict.

Each converter takes (state_dict, target_state_dict) and returns a state dict meant to load strictly.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

StateDict = dict[str, torch.Tensor]


def timm_identity(sd: StateDict, target: StateDict) -> StateDict:
    return dict(sd)


def ucbdrive_dla(sd: StateDict, target: StateDict) -> StateDict:
    """ucbdrive/dla uses timm's key names, but builds a `project` conv+BN on every Tree whose channels
    change, also on non-leaf trees where its output is overwritten and never used. timm omits those;
    drop them (only project keys timm has no slot for, so a real mismatch still fails strict loading)."""
    dead = re.compile(r"^(level\d(?:\.tree\d)*)\.project\.")
    return {k: v for k, v in sd.items() if not (dead.match(k) and k not in target)}


_V1_RENAMES = [
    (re.compile(r"^stem\.stem_(\d)/(conv|norm)\.(.+)$"),
     lambda m: f"stem.{int(m[1]) - 1}.{_v1_norm(m[2])}.{m[3]}"),
    (re.compile(r"^stage(\d)\.OSA\d_(\d+)\.layers\.(\d+)\.OSA\d_\d+_\d+/(conv|norm)\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.conv_mid.{m[3]}.{_v1_norm(m[4])}.{m[5]}"),
    (re.compile(r"^stage(\d)\.OSA\d_(\d+)\.concat\.OSA\d_\d+_concat/(conv|norm)\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.conv_concat.{_v1_norm(m[3])}.{m[4]}"),
    (re.compile(r"^classifier\.(weight|bias)$"), lambda m: f"head.fc.{m[1]}"),
]


def _v1_norm(kind: str) -> str:
    return "bn" if kind == "norm" else kind


def vovnet_v1(sd: StateDict, target: StateDict) -> StateDict:
    """The seed article's VoVNet-v1 names (`stem.stem_1/conv.weight`, `stage2.OSA2_1.layers.0.OSA2_1_0/...`)."""
    out = {}
    for key, value in sd.items():
        for pattern, rename in _V1_RENAMES:
            m = pattern.match(key)
            if m:
                key = rename(m)
                break
        out[key] = value  # unmatched keys pass through and are reported by strict loading
    return out


def lukemelas_lite(sd: StateDict, target: StateDict) -> StateDict:
    """lukemelas-style EfficientNet(-Lite) names (`_blocks.0._depthwise_conv.weight`): the tensors come in
    the same order as timm's, so rename by position, checking every shape on the way."""
    if len(sd) != len(target):
        return dict(sd)  # let strict loading report the mismatch
    out = {}
    for (src_key, value), (dst_key, ref) in zip(sd.items(), target.items()):
        if value.shape != ref.shape:
            return dict(sd)
        out[dst_key] = value
    return out


_MMCLS_RENAMES = [
    (re.compile(r"^stem\.(?:0\.)?(conv|bn)\."), r"stem.conv1.\1."),  # CSPResNet: stem.0.*, CSPDarkNet: stem.*
    (re.compile(r"\.downsample_conv\."), ".conv_down."),
    (re.compile(r"\.expand_conv\."), ".conv_exp."),
    (re.compile(r"\.atfer_blocks_conv\."), ".conv_transition_b."),  # sic: mmpretrain's spelling
    (re.compile(r"\.final_conv\."), ".conv_transition."),
    # ResNet/ResNeXt bottlenecks keep bare convs and norms (conv1, bn1); timm wraps each pair (conv1.conv/.bn)
    (re.compile(r"(\.blocks\.\d+)\.conv(\d)\.weight$"), r"\1.conv\2.conv.weight"),
    (re.compile(r"(\.blocks\.\d+)\.bn(\d)\."), r"\1.conv\2.bn."),
]


def mmcls(sd: StateDict, target: StateDict) -> StateDict:
    """mmcls / mmpretrain ImageClassifier checkpoints (`backbone.stages.0.expand_conv.conv.weight`,
    `head.fc.weight`) of CSPResNet / CSPResNeXt / CSPDarkNet, which mmcls converted from timm: the same
    network under other names."""
    out = {}
    for key, value in sd.items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            for pattern, repl in _MMCLS_RENAMES:
                key = pattern.sub(repl, key)
        out[key] = value  # `head.fc.*` is already timm's name; anything else is reported by strict loading
    return out


_PADDLE_BN = {"_mean": "running_mean", "_variance": "running_var"}


def ppcls(sd: StateDict, target: StateDict) -> StateDict:
    """PaddleClas state dicts (`.pdparams`): timm's module names (PaddleClas ported these nets from timm
    and ucbdrive) with Paddle's BatchNorm statistic names, nn.Linear weights stored [in, out], and the
    classifier at the top level (`fc`) where timm's CSPNet has `head.fc`."""
    out = {}
    for key, value in sd.items():
        module, dot, leaf = key.rpartition(".")
        key = f"{module}{dot}{_PADDLE_BN.get(leaf, leaf)}"
        if leaf == "weight" and value.ndim == 2:
            value = value.t().contiguous()  # Paddle's Linear computes x @ W with W [in, out]
        if key not in target and f"head.{key}" in target:
            key = f"head.{key}"
        out[key] = value
    return with_bn_counters(out, target)


def with_bn_counters(sd: StateDict, target: StateDict) -> StateDict:
    """Add the `num_batches_tracked` counters PyTorch's BatchNorm keeps and other frameworks do not
    (eval never reads them), for every BN whose statistics the checkpoint does carry."""
    out = dict(sd)
    for key, ref in target.items():
        if key.endswith(".num_batches_tracked") and key not in out \
                and key.replace("num_batches_tracked", "running_mean") in out:
            out[key] = torch.zeros_like(ref)
    return out


CONVERTERS: dict[str, Callable[[StateDict, StateDict], StateDict]] = {
    "timm": timm_identity,
    "ucbdrive": ucbdrive_dla,
    "vovnet_v1": vovnet_v1,
    "lukemelas_lite": lukemelas_lite,
    "mmcls": mmcls,
    "ppcls": ppcls,
}
