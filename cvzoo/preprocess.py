"""Torch-free preprocessing, bit-exact with timm's eval transform (Resize short side -> CenterCrop ->
ToTensor -> Normalize), with the sources' own resize rules where they differ (PaddleClas: OpenCV-style
bilinear), and robust to the images users really have. Pillow + numpy only."""
from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .card import Preprocessing
from .errors import CvzooError
from .machine import physical_cores

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


def load_image(path: Union[str, Path], data: Optional[bytes] = None) -> Image.Image:
    """Decode any image file (or its bytes, `data`, named `path`) to 8-bit RGB, or raise CvzooError naming the file
    and the problem."""
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise CvzooError(f"{path}: empty file")
        with Image.open(path if data is None else io.BytesIO(data)) as im:
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


def resize_crop(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Resize the short side to `pre.resize_size`, then center-crop size x size; uint8 HWC RGB out.
    Default rules are torchvision's (timm, mmcls); `pre` says where a source differs (PaddleClas)."""
    size, short = pre.input_size, pre.resize_size
    if pre.exif_orientation:
        img = ImageOps.exif_transpose(img)
    w, h = img.size
    if min(w, h) != short:
        scaled = (lambda n: int(round(n))) if pre.long_side == "round" else int
        new = (short, scaled(short * h / w)) if w <= h else (scaled(short * w / h), short)
        if pre.resampler == "opencv":
            arr = opencv_linear_resize(np.asarray(img), new[0], new[1])
        else:
            arr = np.asarray(img.resize(new, PIL_INTERPOLATION[pre.interpolation]))
    else:
        arr = np.asarray(img)
    h, w = arr.shape[:2]
    if w < size or h < size:  # crop_pct > 1: torchvision pads with zeros, symmetric
        canvas = np.zeros((max(h, size), max(w, size), 3), np.uint8)
        top, left = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
        canvas[top:top + h, left:left + w] = arr
        arr, (h, w) = canvas, canvas.shape[:2]
    if pre.crop_offset == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return arr[top:top + size, left:left + size]


_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: uint8 bilinear runs in 11-bit fixed point per axis


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of cv2.resize INTER_LINEAR along one axis: half-pixel
    centres, no antialiasing (every output reads 2 inputs), edges clamped."""
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    frac[i0 < 0], i0[i0 < 0] = 0, 0
    edge = i0 >= n_in - 1
    frac[edge], i0[edge] = 0, n_in - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(1 << _COEF_BITS)).astype(np.int32)
    return i0, np.minimum(i0 + 1, n_in - 1), w0


def opencv_linear_resize(arr: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """uint8 HWC resize with cv2.resize(INTER_LINEAR) arithmetic, in numpy (no OpenCV dependency):
    a horizontal pass with 11-bit weights, then OpenCV's SIMD vertical pass (x86 builds), whose
    intermediate shifts we copy. PaddleClas' resize + center crop of 1008 photos: bit-exact with
    cv2 4.6 (tests/test_sources.py); whole resized images differ in ~0.01% of values, by 1."""
    one = 1 << _COEF_BITS
    x0, x1, wx = _linear_taps(arr.shape[1], new_w)
    y0, y1, wy = _linear_taps(arr.shape[0], new_h)
    src = arr.astype(np.int32)
    rows = src[:, x0] * wx[None, :, None] + src[:, x1] * (one - wx)[None, :, None]  # scale 2^11
    top = (wy[:, None, None] * (rows[y0] >> 4)) >> 16
    bottom = ((one - wy)[:, None, None] * (rows[y1] >> 4)) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


@lru_cache(maxsize=32)
def _normalize_table(mean: tuple, std: tuple) -> np.ndarray:
    """(3, 256) float32: channel c, pixel value v -> (v/255 - mean[c]) / std[c], computed in float32 like
    torchvision, so a lookup gives the very bits the arithmetic would."""
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return (v[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


def normalize(img: Union[Image.Image, np.ndarray], pre: Preprocessing) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, x/255, (x - mean) / std, all in float32 like torchvision. By table
    lookup (one pass instead of five; 2-3x faster, measured on the demo photos)."""
    x = np.asarray(img, dtype=np.uint8)
    table = _normalize_table(tuple(pre.mean), tuple(pre.std))
    out = np.empty((3,) + x.shape[:2], np.float32)
    for c in range(3):
        np.take(table[c], x[:, :, c], out=out[c])
    return out


def preprocess_image(image: Union[str, Path, Image.Image], pre: Preprocessing) -> np.ndarray:
    """One image (path or PIL image) -> the model's float32 CHW input."""
    img = image if isinstance(image, Image.Image) else load_image(image)
    if img.mode != "RGB":
        img = _to_rgb(img)
    return normalize(resize_crop(img, pre), pre)


def vdsp_params(pre: Preprocessing) -> dict:
    """The seeds' vdsp_params-style description, for another runtime to reproduce this preprocessing."""
    size, short = pre.input_size, pre.resize_size
    long_rule = "round(short_side * long / short)" if pre.long_side == "round" else "int(short_side * long / short)"
    offset = "floor" if pre.crop_offset == "floor" else "round"
    resize = {"short_side": short, "interpolation": pre.interpolation, "long_side": long_rule}
    if pre.resampler == "opencv":
        resize.update(backend="opencv", antialias=False, equivalent="cv2.resize(img, (w, h), cv2.INTER_LINEAR)")
    else:
        resize.update(backend="pillow", antialias=True)
    return {
        "color_order": pre.color_order, "layout": pre.layout, "dtype": "float32",
        "exif_orientation": pre.exif_orientation,
        "resize": resize,
        "center_crop": {"width": size, "height": size,
                        "offset": f"top={offset}((H-size)/2), left={offset}((W-size)/2)"},
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


@dataclass
class Decoded:
    path: Path
    array: Optional[np.ndarray]
    error: Optional[str]
    notes: list[str]


def decode(path: Path, pre: Preprocessing, pixels: bool = False, data: Optional[bytes] = None) -> Decoded:
    """One file (or its bytes, `data`, named `path`) -> the engine's input: float32 CHW normalized, or with `pixels`
    the uint8 HWC crop (for engines that normalize themselves)."""
    try:
        if path.suffix == ".npz" and data is None:
            from .datasets import load_npz_image
            img = load_npz_image(path)
        else:
            img = load_image(path, data)
        crop = resize_crop(img, pre)
        return Decoded(path, crop if pixels else normalize(crop, pre), None, image_notes(img))
    except CvzooError as e:
        return Decoded(path, None, str(e), [])
    except Exception as e:  # an unforeseen decoder failure must not stop a 50,000-image run
        return Decoded(path, None, f"{path}: cannot decode ({type(e).__name__}: {e})", [])


def decode_stream(paths: Sequence[Path], pre: Preprocessing, workers: Optional[int] = None,
                  prefetch: int = 64, pixels: bool = False) -> Iterator[Decoded]:
    """Decode + preprocess in a thread pool (Pillow releases the GIL), yielding in input order."""
    workers = workers or physical_cores()
    if workers <= 1:
        for p in paths:
            yield decode(p, pre, pixels)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvzoo-decode") as pool:
        pending = []
        it = iter(paths)
        for p in it:
            pending.append(pool.submit(decode, p, pre, pixels))
            if len(pending) >= prefetch:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def batches(stream: Iterable[Decoded], batch: int) -> Iterator[list[Decoded]]:
    """Group decoded images, in order, into chunks holding at most `batch` usable ones."""
    chunk, usable = [], 0
    for d in stream:
        chunk.append(d)
        usable += d.error is None
        if usable >= batch:
            yield chunk
            chunk, usable = [], 0
    if chunk:
        yield chunk
