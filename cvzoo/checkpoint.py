"""Checkpoint loading: data only, never code. Strict, with one clear error line when it does not fit."""
from __future__ import annotations

import importlib.util
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .card import ModelCard, list_models
from .errors import CvzooError

if TYPE_CHECKING:  # finding a card's weights needs no torch: a build from the export cache never imports it
    import torch

    from .converters import StateDict

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_SHOWN = 6  # keys listed per category in an error line


def read_state_dict(path: Path, use_ema: bool = False) -> StateDict:
    """Read a .pth/.pth.tar/.pt/.safetensors/.pdparams file into a float32 state dict without running any
    code."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CvzooError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CvzooError(f"{path}: checkpoint file is empty")
    if path.suffix == ".pdparams":
        from .pdparams import read_pdparams
        # unpickled arrays own writable memory: share it rather than copy the whole checkpoint again
        obj = {k: torch.from_numpy(np.require(v, requirements="W")) for k, v in read_pdparams(path).items()}
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CvzooError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    else:
        try:
            with warnings.catch_warnings():  # a legacy pickle of another protocol: it loads or is refused below
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(path, e) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CvzooError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None
    return _unwrap(obj, path, use_ema)


def _refusal(path: Path, e: pickle.UnpicklingError) -> CvzooError:
    """torch's weights-only refusal reduced to what it met: a global (code to import or call), or bytes that are no
    checkpoint. Its advice to load with weights_only=False is left out."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    code = re.search(r"GLOBAL ([\w.]+)", text)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1).strip() if found else (text.strip().splitlines() or [type(e).__name__])[-1]
    if code:
        return CvzooError(f"{path}: refused: the checkpoint pickle asks to import or call code ({code.group(1)}), "
                          "which cvzoo never executes (only tensors are accepted)")
    return CvzooError(f"{path}: not a readable checkpoint (not a PyTorch file, or corrupt): {detail}")


def _unwrap(obj, path: Path, use_ema: bool) -> StateDict:
    import torch
    if isinstance(obj, dict):
        keys = ("state_dict_ema", "model_ema") + WRAPPER_KEYS if use_ema else WRAPPER_KEYS
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CvzooError(f"{path}: no state dict found (expected a dict of tensors or one under "
                         f"{'/'.join(WRAPPER_KEYS)})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CvzooError(f"{path}: state dict holds non-tensor entries: {', '.join(map(str, bad[:_SHOWN]))}")
    out = {}
    for key, value in obj.items():
        while key.startswith("module."):  # DataParallel / DDP wrappers
            key = key[len("module."):]
        out[key] = value.float() if value.is_floating_point() else value  # fp16/bf16 checkpoints upcast
    return out


def _mismatch(sd: StateDict, target: StateDict) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
              for k in target if k in sd and sd[k].shape != target[k].shape]
    return missing, unexpected, shapes


def _fmt(label: str, items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {label} [{', '.join(items[:_SHOWN])}]{more}"


def load_weights(model: torch.nn.Module, card: ModelCard, path: Path, checkpoint_format: str = "auto",
                 use_ema: bool = False) -> str:
    """Load a checkpoint strictly into `model`; returns the checkpoint format that fitted."""
    from .converters import CONVERTERS
    formats = list(card.checkpoint) if checkpoint_format == "auto" else [checkpoint_format]
    unknown = [f for f in formats if f not in CONVERTERS]
    if unknown:
        raise CvzooError(f"unknown checkpoint format '{unknown[0]}' (known: {', '.join(CONVERTERS)})")
    if Path(path).suffix == ".pdparams" and "ppcls" not in formats:
        raise CvzooError(f"{path}: a PaddleClas .pdparams checkpoint, but {card.name} takes "
                         f"{'/'.join(formats)} checkpoints{_sibling_hint(card, 'ppcls')}")
    raw = read_state_dict(path, use_ema=use_ema)
    target = model.state_dict()
    best = None
    for fmt in formats:
        sd = CONVERTERS[fmt](raw, target)
        missing, unexpected, shapes = _mismatch(sd, target)
        if not (missing or unexpected or shapes):
            model.load_state_dict(sd, strict=True)
            return fmt
        score = len(missing) + len(unexpected) + len(shapes)
        if best is None or score < best[0]:
            best = (score, fmt, missing, unexpected, shapes)
    _, fmt, missing, unexpected, shapes = best
    parts = [_fmt(lbl, items) for lbl, items in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if items]
    hint = _classes_hint(model, raw, card)
    raise CvzooError(f"{path}: does not fit {card.name} ({card.arch}) as a {fmt} checkpoint{hint}: "
                     + "; ".join(parts))


def _sibling_hint(card: ModelCard, fmt: str) -> str:
    names = [c.name for c in list_models() if c.arch == card.arch and fmt in c.checkpoint]
    return f"; use {' or '.join(names)}" if names else ""


def _classes_hint(model: torch.nn.Module, raw: StateDict, card: ModelCard) -> str:
    """Name the common case plainly: the right network with another number of classes."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    weight = getattr(classifier, "weight", None)
    if weight is None:
        return ""
    for key, value in raw.items():
        if value.ndim == weight.ndim and value.shape[1:] == weight.shape[1:] and key.endswith("weight") \
                and value.shape[0] != weight.shape[0] and key.split(".")[-2] in ("fc", "classifier", "_fc"):
            return f" (wrong number of classes: checkpoint has {value.shape[0]}, card has {card.num_classes})"
    return ""


def weights_search_path() -> list[Path]:
    """Where card weight files are looked up: $CVZOO_WEIGHTS_PATH, then ../shared/data/fixtures."""
    paths = [Path(p) for p in os.environ.get("CVZOO_WEIGHTS_PATH", "").split(os.pathsep) if p]
    repo_root = Path(__file__).resolve().parent.parent
    paths += [Path.cwd() / "../shared/data/fixtures", repo_root / "../shared/data/fixtures"]
    return paths


def resolve_default_weights(card: ModelCard) -> Path:
    """The card's own weights: a file shipped by a PyPI package, or a named file in the search path."""
    src = card.weights
    if src is None:
        raise CvzooError(f"{card.name} has no default weights here (no hub at run time); pass --weights PATH")
    if src.package:
        spec = importlib.util.find_spec(src.package)
        if spec is None or not spec.submodule_search_locations:
            raise CvzooError(f"{card.name}: default weights come from PyPI package '{src.pip or src.package}', "
                             f"which is not installed (pip install {src.pip or src.package})")
        found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("models/*.pth"))
        if not found:
            raise CvzooError(f"{card.name}: package {src.package} ships no models/*.pth")
        return found[0]
    for folder in weights_search_path():
        candidate = folder / src.file
        if candidate.is_file():
            return candidate.resolve()
    raise CvzooError(f"{card.name}: weights file {src.file} not found in "
                     f"{', '.join(str(p) for p in weights_search_path())} (set CVZOO_WEIGHTS_PATH)")


def find_default_weights(card: ModelCard) -> Optional[Path]:
    try:
        return resolve_default_weights(card)
    except CvzooError:
        return None
