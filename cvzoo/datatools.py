"""Data preparation the seeds use: valprep (flat ILSVRC2012 val -> synset folders) and image2npz."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from .datasets import load_samples
from .errors import CvzooError
from .labels import load_label_set
from .postprocess import writable_file, writable_folder, write_text_atomic
from .preprocess import IMAGE_SUFFIXES, load_image


def valprep(src: Path, labels: Path, dst: Optional[Path] = None, mode: Literal["move", "copy", "symlink"] = "symlink",
            label_set: str = "imagenet-1k") -> dict:
    """Put each image of a flat val folder into DST/<synset>/. Idempotent: done files are skipped, and a
    second run (even after `move`) changes nothing."""
    src, dst = Path(src), Path(dst or src)
    if not src.is_dir():
        raise CvzooError(f"{src}: not a folder")
    writable_folder(dst)
    synsets = [s for s, _ in load_label_set(label_set)]
    done = skipped = 0
    samples = load_samples(src, synsets, labels) if any(p.suffix.lower() in IMAGE_SUFFIXES
                                                          for p in src.iterdir() if p.is_file()) else []
    for s in samples:
        target = dst / synsets[s.label] / s.path.name
        if target.exists() or target.is_symlink():
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "move":
            shutil.move(str(s.path), target)
        elif mode == "copy":
            shutil.copy2(s.path, target)
        else:
            os.symlink(s.path.resolve(), target)
        done += 1
    if not samples and not any(p.is_dir() for p in dst.iterdir()):
        raise CvzooError(f"{src}: no images to sort")
    return {"placed": done, "already_there": skipped, "classes": len({s.label for s in samples})}


def image2npz(src: Path, dst: Path, datalist: Path, preprocessing=None) -> dict:
    """Decoded RGB CHW uint8 arrays ('image'), optionally the model's preprocessed float32 tensor
    ('input'), one .npz per image, plus a datalist ('path [label]' per line) — the seeds' image2npz."""
    from .preprocess import normalize, resize_crop
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CvzooError(f"{src}: not a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CvzooError(f"{src}: no images found")
    writable_folder(dst)
    writable_file(datalist)
    synsets = {s for s, _ in load_label_set("imagenet-1k")}
    lines, errors = [], []
    for f in files:
        try:
            img = load_image(f)
        except CvzooError as e:
            errors.append(str(e))
            continue
        out = dst / f.relative_to(src).with_suffix(".npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"image": np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)}
        if preprocessing is not None:
            arrays["input"] = normalize(resize_crop(img, preprocessing), preprocessing)
        tmp = out.with_name(out.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
        label = f.parent.name if f.parent.name in synsets else None  # the truth travels as a synset
        lines.append(f"{out.resolve()}" + (f" {label}" if label else ""))
    write_text_atomic(datalist, "".join(line + "\n" for line in lines))
    return {"written": len(lines), "errors": errors}
