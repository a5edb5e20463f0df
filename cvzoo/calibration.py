"""Calibration sets: seeded, class-balanced file selection and a streaming ORT CalibrationDataReader."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from .artifact import sha256
from .buildconfig import CalibrationConfig
from .card import Preprocessing
from .errors import CvzooError, Say


DEFAULT_COUNT = 300  # calibration images (NNCF's default subset size)
MIN_HOLDOUT, HOLDOUT_SHARE = 200, 0.2  # the guard's held-out images: this many, or this share of the folder


def folder_files(cfg: CalibrationConfig, say: Say = print) -> list[Path]:
    """The folder's images in name order, each distinct content once."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise CvzooError(f"{root}: calibration folder not found")
    suffixes = {s.lower() if s.startswith(".") else "." + s.lower() for s in cfg.suffix}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise CvzooError(f"{root}: calibration folder has no images with suffix {' '.join(sorted(suffixes))}")
    copies = byte_identical_copies(files)
    if copies:
        copy, first = next(iter(copies.items()))
        say(f"warning: {root}: {len(copies)} of {len(files)} calibration files are byte-identical copies of others "
            f"(e.g. {copy.relative_to(root)} = {first.relative_to(root)}); each image is used once")
        files = [f for f in files if f not in copies]
    if cfg.count is not None and cfg.count > len(files):
        raise CvzooError(f"{root}: calibration count {cfg.count} is larger than the {len(files)} distinct images "
                         "there")
    return files


def byte_identical_copies(files: Sequence[Path]) -> dict[Path, Path]:
    """copy -> the first file (in the given order) with the same bytes. A copy on both sides of the split would let
    the guard judge images it calibrated on. Only files whose sizes collide are read."""
    by_size: dict[int, list[Path]] = {}
    for f in files:
        by_size.setdefault(f.stat().st_size, []).append(f)
    copies: dict[Path, Path] = {}
    for same_size in (g for g in by_size.values() if len(g) > 1):
        first: dict[str, Path] = {}
        for f in same_size:
            try:
                h = sha256(f)
            except OSError:  # unreadable: decoding says so, one line per file
                continue
            if h in first:
                copies[f] = first[h]
            else:
                first[h] = f
    return dict(sorted(copies.items()))


def split_sizes(cfg: CalibrationConfig, available: int) -> tuple[int, int]:
    """(calibration, held-out) image counts. Held out: 200 or 20% of the folder, whichever is larger (a number or
    share when given); where the folder cannot hold both, the held-out part takes at most half of it."""
    if cfg.holdout is None:
        held = max(MIN_HOLDOUT, math.ceil(HOLDOUT_SHARE * available))
    else:
        held = max(1, round(cfg.holdout * available)) if cfg.holdout < 1 else int(cfg.holdout)
    count = cfg.count or min(DEFAULT_COUNT, available - min(held, available // 2))
    held = min(held, available - count)
    if held < 1:
        raise CvzooError(f"{cfg.path}: no images left for the guard's held-out set beside {count} calibration images "
                         f"(the folder has {available}); lower --count or add images")
    return count, held


def select_split(cfg: CalibrationConfig, say: Say = print) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out files, seeded and class-balanced, disjoint (in content too)."""
    files = folder_files(cfg, say)
    count, held = split_sizes(cfg, len(files))
    return split_holdout(select_files(cfg, count + held, files), held)


def select_files(cfg: CalibrationConfig, count: Optional[int] = None, files: Optional[list[Path]] = None,
                 say: Say = print) -> list[Path]:
    """`count` files, seeded; round-robin over class sub-folders when the folder has them, so every
    class is represented (what the seeds ask of a calibration set)."""
    files = files if files is not None else folder_files(cfg, say)
    count = count or cfg.count or min(DEFAULT_COUNT, len(files))
    rng = random.Random(cfg.seed)
    groups: dict[Path, list[Path]] = {}
    for f in files:
        groups.setdefault(f.parent, []).append(f)
    for g in groups.values():
        rng.shuffle(g)
    order = sorted(groups)
    rng.shuffle(order)
    picked: list[Path] = []
    while len(picked) < count:  # one per class per round
        for key in order:
            if groups[key] and len(picked) < count:
                picked.append(groups[key].pop())
    return picked


def split_holdout(files: Sequence[Path], held: int) -> tuple[list[Path], list[Path]]:
    """`held` evenly spaced files go to the held-out part, so both parts keep the round-robin's class balance."""
    n = len(files)
    marks = {(k * n) // held + n // (2 * held) for k in range(held)} if held else set()
    return [f for i, f in enumerate(files) if i not in marks], [f for i, f in enumerate(files) if i in marks]


def load_arrays(files: Sequence[Path], pre: Preprocessing) -> tuple[np.ndarray, list[Path], list[str]]:
    """Decode + preprocess (in parallel); returns (N,3,H,W) array, the files used, and error lines."""
    from .preprocess import decode_stream
    arrays, used, errors = [], [], []
    for d in decode_stream(list(files), pre):
        if d.error:
            errors.append(d.error)
        else:
            arrays.append(d.array)
            used.append(d.path)
    if not arrays:
        raise CvzooError("no usable calibration images: " + "; ".join(errors[:3]))
    return np.stack(arrays), used, errors


def labels_for(files: Sequence[Path], synsets: Sequence[str]) -> Optional[np.ndarray]:
    """Class indices when every file's folder (or file-name prefix) is a synset of the model; else None."""
    index = {s: i for i, s in enumerate(synsets)}
    out = []
    for f in files:
        key = f.parent.name if f.parent.name in index else f.name.split("_")[0]
        if key not in index:
            return None
        out.append(index[key])
    return np.asarray(out)


class ArrayReader(CalibrationDataReader):
    """onnxruntime.quantization CalibrationDataReader over preprocessed arrays, in batches."""

    def __init__(self, arrays: np.ndarray, input_name: str, batch: int = 8):
        # ORT's histogram calibrators stack per-batch outputs: every batch must have the same size
        self.batch = max(b for b in range(1, batch + 1) if len(arrays) % b == 0)
        self.arrays, self.input_name = arrays, input_name
        self.rewind()

    def get_next(self):
        if self._i >= len(self.arrays):
            return None
        x = self.arrays[self._i:self._i + self.batch]
        self._i += self.batch
        return {self.input_name: x}

    def rewind(self):
        self._i = 0

    def __len__(self):
        return (len(self.arrays) + self.batch - 1) // self.batch

    def set_range(self, start_index: int, end_index: int):  # used by ORT's strided calibration
        self._i = start_index
