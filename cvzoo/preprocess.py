"""Torch-free preprocessing, bit-exact with timm's eval transform (Resize short side -> CenterCrop ->
ToTensor -> Normalize) and robust to the images users really have. Pillow + numpy only."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .card import Preprocessing
from .errors import CvzooError

PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
TINY_SIDE = 8  # smaller images still run, with a warning


# Pillow only warns between 1x and 2x its pixel limit; load_image refuses both itself (warnings
# filters are process-wide and not thread-safe to toggle, so this one is silenced once here).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def load_image(path: Union[str, Path]) -> Image.Image:
    """Decode any image file to 8-bit RGB, or raise CvzooError naming the file and the problem."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CvzooError(f"{path}: empty file")
        with Image.open(path) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.size[0] * im.size[1] > limit:
                raise CvzooError(f"{path}: image too large: {im.size[0]}x{im.size[1]} is over Pillow's "
                                 f"decompression-bomb limit of {limit} pixels")
            im.load()
            img = _to_rgb(im)
    except CvzooError:
        raise
    except Image.DecompressionBombError:
        raise CvzooError(f"{path}: image too large: over Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise CvzooError(f"{path}: not an image (unknown or unsupported format)") from None
    except FileNotFoundError:
        raise CvzooError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CvzooError(f"{path}: is a directory, not an image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CvzooError(f"{path}: truncated or corrupt image ({e})") from None
    return img


def image_notes(img: Image.Image) -> list[str]:
    """Oddities worth a warning line that still give a result."""
    if min(img.size) < TINY_SIDE:
        return [f"tiny image {img.size[0]}x{img.size[1]}, upscaled"]
    return []


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: scale to 8 bits instead of Pillow's clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr * 255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow asks for this route for palette images with transparency
    return im.convert("RGB")


def resize_crop(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """Resize the short side to floor(size / crop_pct), then center-crop size x size (torchvision rules)."""
    size, short = pre.input_size, pre.resize_size
    w, h = img.size
    if min(w, h) != short:
        if w <= h:
            new = (short, int(short * h / w))
        else:
            new = (int(short * w / h), short)
        img = img.resize(new, PIL_INTERPOLATION[pre.interpolation])
    w, h = img.size
    if w < size or h < size:  # crop_pct > 1: torchvision pads with zeros, symmetric
        canvas = Image.new("RGB", (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalize(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, x/255, (x - mean) / std, all in float32 like torchvision."""
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(image: Union[str, Path, Image.Image], pre: Preprocessing) -> np.ndarray:
    """One image (path or PIL image) -> the model's float32 CHW input."""
    img = image if isinstance(image, Image.Image) else load_image(image)
    if img.mode != "RGB":
        img = _to_rgb(img)
    return normalize(resize_crop(img, pre), pre)


def vdsp_params(pre: Preprocessing) -> dict:
    """The seeds' vdsp_params-style description, for another runtime to reproduce this preprocessing."""
    size, short = pre.input_size, pre.resize_size
    return {
        "color_order": pre.color_order, "layout": pre.layout, "dtype": "float32",
        "resize": {"short_side": short, "interpolation": pre.interpolation,
                   "long_side": "int(short_side * long / short)", "antialias": True},
        "center_crop": {"width": size, "height": size,
                        "offset": "top=round((H-size)/2), left=round((W-size)/2)"},
        "scale": 1.0 / 255.0,
        "mean": list(pre.mean), "std": list(pre.std),
        "formula": "(pixel/255 - mean) / std, per RGB channel",
    }


def find_images(inputs: list[Union[str, Path]]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (recursively, sorted) into image paths; returns (paths, error lines)."""
    paths, errors = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{item}: no images found (looked for {' '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            errors.append(f"{item}: no such file or directory")
    return paths, errors
