"""Evaluation data: ImageNet-val layout (synset folders), flat folder + ground truth, or an npz datalist."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import CvzooError
from .preprocess import IMAGE_SUFFIXES


def demo_images() -> list[Path]:
    """Real photos shipped in the package (used for the demo and to verify exports on real inputs)."""
    folder = resources.files("cvzoo") / "demo"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jpg"))


@dataclass(frozen=True)
class Sample:
    path: Path
    label: Optional[int]  # index in the model's class order; None when unknown


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_samples(data: Path, synsets: Sequence[str], labels: Optional[Path] = None) -> list[Sample]:
    """Samples in a deterministic order with labels in the model's class order.

    - DATA/<synset>/*.JPEG (ImageNet val after valprep): label = the synset's index in the model.
    - DATA/<synset>_*.JPEG (ImageNet train-style names): label from the file-name prefix.
    - DATA/*.JPEG + --labels: LOC_val_solution.csv (ImageId,PredictionString with synsets), a
      "file index" list (Caffe val.txt, 0-based), or one 1-based index per line for the sorted files
      (ILSVRC2012_validation_ground_truth.txt style; the index must be in the model's class order —
      the devkit's own ILSVRC2012_ID order differs from the sorted-synset order and needs mapping).
    - DATA = a datalist .txt of .npz files (cvzoo image2npz / the seeds' image2npz).
    """
    data = Path(data)
    index = {s: i for i, s in enumerate(synsets)}
    if data.is_file() and data.suffix == ".txt":
        return _npz_datalist(data, index)
    if not data.is_dir():
        raise CvzooError(f"{data}: no such data folder or datalist")
    subdirs = sorted(p for p in data.iterdir() if p.is_dir())
    if subdirs and labels is None:
        unknown = [d.name for d in subdirs if d.name not in index]
        if unknown:
            raise CvzooError(f"{data}: class folders not in the model's label set: {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''}")
        out = [Sample(p, index[d.name]) for d in subdirs for p in _images(d)]
    else:
        files = _images(data)
        if labels:
            out = _with_labels(files, labels, index)
        elif files and all(f.name.split("_")[0] in index for f in files):  # n01440764_xxx.JPEG naming
            out = [Sample(f, index[f.name.split("_")[0]]) for f in files]
        else:
            out = [Sample(p, None) for p in files]
    if not out:
        raise CvzooError(f"{data}: no images found")
    return out


def _text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CvzooError(f"{path}: not UTF-8 text (byte {e.start}), so not a {what}") from None


def _with_labels(files: list[Path], labels: Path, index: dict[str, int]) -> list[Sample]:
    if not labels.is_file():
        raise CvzooError(f"{labels}: ground-truth file not found")
    text = _text(labels, "ground-truth file").strip().splitlines()
    at = lambda n, why: CvzooError(f"{labels}: line {n}: {why}")
    by_stem: dict[str, int] = {}
    if labels.suffix == ".csv":  # LOC_val_solution.csv
        rows = csv.DictReader(text)
        if not {"ImageId", "PredictionString"} <= set(rows.fieldnames or []):
            raise CvzooError(f"{labels}: a LOC_val_solution.csv needs the columns ImageId and PredictionString")
        for n, row in enumerate(rows, 2):
            synset = (row["PredictionString"] or "").split()[:1]
            if not synset or synset[0] not in index:
                raise at(n, f"synset {synset[0] if synset else '(none)'} is not in the model's label set")
            by_stem[row["ImageId"]] = index[synset[0]]
    elif text and len(text[0].split()) == 2:  # "ILSVRC2012_val_00000001.JPEG 65" (0-based sorted-synset index)
        for n, line in enumerate(text, 1):
            parts = line.split()
            if len(parts) != 2 or _class_index(parts[1], 0, len(index) - 1) is None:
                raise at(n, f"expected 'FILE INDEX' with a 0-based class index 0..{len(index) - 1}, got '{line}'")
            by_stem[Path(parts[0]).stem] = int(parts[1])
    else:  # one index per line, aligned with the sorted files
        values = [_class_index(v, 1, len(index)) for v in text]
        for n, (v, line) in enumerate(zip(values, text), 1):
            if v is None:
                raise at(n, f"expected one 1-based class index 1..{len(index)}, got '{line}'")
        if len(values) != len(files):
            raise CvzooError(f"{labels}: {len(values)} labels for {len(files)} images")
        return [Sample(f, v - 1) for f, v in zip(files, values)]
    missing = [f.name for f in files if f.stem not in by_stem]
    if missing:
        raise CvzooError(f"{labels}: no label for {len(missing)} images, e.g. {missing[0]}")
    return [Sample(f, by_stem[f.stem]) for f in files]


def _class_index(text: str, low: int, high: int) -> Optional[int]:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and low <= int(text) <= high else None


def _npz_datalist(datalist: Path, index: dict[str, int]) -> list[Sample]:
    out = []
    for line in _text(datalist, "datalist").splitlines():
        if not line.strip():
            continue
        path = Path(line.split()[0])
        if not path.is_absolute():
            path = datalist.parent / path
        tag = line.split()[1] if len(line.split()) > 1 else None  # a synset (or a class index)
        label = None if tag is None else (index[tag] if tag in index
                                          else int(tag) if tag.isascii() and tag.isdigit() else None)
        out.append(Sample(path, label))
    if not out:
        raise CvzooError(f"{datalist}: empty datalist")
    return out


def load_npz_image(path: Path):
    """An image2npz file -> PIL RGB image (arrays are decoded RGB, CHW uint8)."""
    from PIL import Image
    try:
        with np.load(path) as z:
            arr = z["image"]
    except Exception as e:
        raise CvzooError(f"{path}: unreadable npz ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[0] != 3 or arr.dtype != np.uint8:
        raise CvzooError(f"{path}: expected a 3xHxW uint8 array under 'image', got {arr.shape} {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)), "RGB")
