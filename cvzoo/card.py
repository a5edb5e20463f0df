"""Model cards: the zoo as data. YAML files under cvzoo/cards/ loaded into typed records.

Torch-free on purpose: deployment code reads cards/manifests without importing torch.
"""
from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import CvzooError
from .labels import load_label_set

Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos"]
CheckpointFormat = Literal["timm", "ucbdrive", "vovnet_v1", "lukemelas_lite", "mmcls", "ppcls"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishedResult(_Strict):
    """One row of a seed table (or of our own training report, for fixtures)."""
    source: str
    top1: float
    top5: Optional[float] = None
    flops_g: Optional[float] = None  # seed convention: thop MACs x 2 / 0.9, in G
    params_m: Optional[float] = None  # thop's parameter count, in M
    input_size: int
    dataset: str = "imagenet-val"


class WeightsSource(_Strict):
    """Where a card's default weights live: a PyPI package that ships them, or a file name."""
    package: Optional[str] = None  # importable module that ships a .pth under models/
    pip: Optional[str] = None  # its PyPI name, for the error message
    file: Optional[str] = None  # a file name searched in the weights path


class Preprocessing(_Strict):
    """Everything needed to turn an image into the model's input tensor.

    Defaults are timm's eval transform (torchvision rules). Sources with other rules say so: mmcls and
    PaddleClas give the short side outright (`resize_short`) and decode with OpenCV, which applies the
    EXIF orientation; PaddleClas also resizes with OpenCV (no antialiasing), rounds the long side and
    floors the crop offset.
    """
    input_size: int
    crop_pct: float  # input_size / resize_short; the short side is floor(input_size / crop_pct) unless given
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_short: Optional[int] = None
    resampler: Literal["pillow", "opencv"] = "pillow"  # Pillow (antialiased) or cv2.resize semantics
    long_side: Literal["floor", "round"] = "floor"  # long side = floor|round(short * long / short_in)
    crop_offset: Literal["round", "floor"] = "round"  # center-crop offset = round|floor((H - size) / 2)
    exif_orientation: bool = False  # rotate by the EXIF tag first, as OpenCV's decoder does (PIL/timm do not)
    color_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"

    @model_validator(mode="before")
    @classmethod
    def _crop_pct_from_resize(cls, v):
        if isinstance(v, dict) and v.get("resize_short"):  # the stated short side wins over family crop_pct
            v = {**v, "crop_pct": round(v["input_size"] / v["resize_short"], 4)}
        return v

    @model_validator(mode="after")
    def _opencv_is_bilinear(self):
        if self.resampler == "opencv" and self.interpolation != "bilinear":
            raise ValueError("resampler 'opencv' is implemented for bilinear (cv2.INTER_LINEAR) only")
        return self

    def at_size(self, size: int) -> "Preprocessing":
        """The same preprocessing for another input size, keeping the crop ratio (a stated short side
        scales with it)."""
        if size == self.input_size:
            return self
        short = round(self.resize_short * size / self.input_size) if self.resize_short else None
        return self.model_copy(update={"input_size": size, "resize_short": short})

    @property
    def resize_size(self) -> int:
        """Short side after resize, as timm and the seeds compute it (or as the source states it)."""
        return self.resize_short or math.floor(self.input_size / self.crop_pct)


# the networks downsample by 32: build configs and --size take no smaller input
MIN_INPUT_SIZE = 32


class ModelCard(_Strict):
    name: str
    family: str
    arch: str  # timm model name (or one cvzoo registers into timm, e.g. vovnet_v1)
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    labels: str  # a shipped label set, see cvzoo/labels/
    preprocessing: Preprocessing
    checkpoint: tuple[CheckpointFormat, ...] = ("timm",)
    weights: Optional[WeightsSource] = None
    published: tuple[PublishedResult, ...] = ()
    paper: Optional[str] = None

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return (v,) if isinstance(v, str) else v

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in load_label_set(self.labels)]

    @property
    def synsets(self) -> list[str]:
        return [syn for syn, _ in load_label_set(self.labels)]

    @property
    def num_classes(self) -> int:
        return len(load_label_set(self.labels))

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def size_or_default(self, size: Optional[int]) -> int:
        """`size` as asked (--size), else the card's own."""
        if size is None:
            return self.input_size
        if size < MIN_INPUT_SIZE:
            raise CvzooError(f"--size must be >= {MIN_INPUT_SIZE}, got {size}")
        return size

    def published_row(self, source: str) -> Optional[PublishedResult]:
        return next((r for r in self.published if r.source == source), None)


_PREPROC_KEYS = {"input_size", "crop_pct", "interpolation", "resize_short", "resampler", "long_side", "crop_offset",
                 "exif_orientation"}


def _read_yaml(name: str) -> dict:
    return yaml.safe_load((resources.files("cvzoo") / "cards" / name).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _registry() -> dict[str, ModelCard]:
    common = _read_yaml("_common.yaml")
    cards: dict[str, ModelCard] = {}
    files = sorted(p.name for p in (resources.files("cvzoo") / "cards").iterdir()
                   if p.name.endswith(".yaml") and not p.name.startswith("_"))
    for fname in files:
        doc = _read_yaml(fname)
        for entry in doc["models"]:
            raw = {**doc.get("defaults", {}), **entry}
            raw.setdefault("family", doc["family"])
            raw.setdefault("paper", doc.get("paper"))
            norm = common["normalization"][raw.pop("normalization")]
            pre = {k: raw.pop(k) for k in _PREPROC_KEYS if k in raw}
            raw["preprocessing"] = Preprocessing(**pre, **norm)
            card = ModelCard(**raw)
            if card.name in cards:
                raise CvzooError(f"duplicate model card '{card.name}' in cvzoo/cards/{fname}")
            cards[card.name] = card
    return cards


def list_models(family: Optional[str] = None) -> list[ModelCard]:
    """All cards, optionally one family, in table order."""
    return [c for c in _registry().values() if family is None or c.family == family]


def networks() -> list[ModelCard]:
    """One card per network: cards whose weights are a file (fixtures, other checkpoint sources) share the
    architecture of a card that is listed."""
    seen: dict[tuple, ModelCard] = {}
    for c in list_models():
        if c.weights is None or c.weights.file is None:
            seen.setdefault((c.arch, repr(c.arch_kwargs)), c)
    return list(seen.values())


def families() -> list[str]:
    return sorted({c.family for c in _registry().values()})


def get_card(name: str) -> ModelCard:
    try:
        return _registry()[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, list(_registry()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `cvzoo list`"
        raise CvzooError(f"unknown model '{name}'{hint}") from None
