"""Issue 3: torch-free preprocessing equals timm's eval transform on real JPEGs, for every zoo setting."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform, resolve_data_config

from cvzoo.card import list_models
from cvzoo.preprocess import load_image, preprocess_image, vdsp_params
from tests.conftest import imagenet_sample_files

# every (interpolation, short side, size) the cards with timm's rules use; the cv2-based sources' own
# rules (mmcls, PaddleClas) are checked against those libraries in test_sources.py
TIMM_RULES = [c for c in list_models() if not c.preprocessing.exif_orientation]
SETTINGS = sorted({(c.preprocessing.interpolation, c.preprocessing.resize_size, c.preprocessing.input_size)
                   for c in TIMM_RULES})


PER_IMAGE = 3  # settings each photo is checked in (all 11, timm's and ours, took 66 ms a photo)


def _card_for(setting):
    return next(c for c in TIMM_RULES if (c.preprocessing.interpolation, c.preprocessing.resize_size,
                                          c.preprocessing.input_size) == setting)


@pytest.mark.shared
def test_parity_with_timm_on_imagenet_sample_images():
    files = imagenet_sample_files()
    assert len(files) == 1000
    transforms = []
    for setting in SETTINGS:
        pre = _card_for(setting).preprocessing
        cfg = resolve_data_config({"input_size": (3, pre.input_size, pre.input_size), "interpolation": pre.interpolation,
                                   "crop_pct": pre.input_size / pre.resize_size, "mean": pre.mean, "std": pre.std, "crop_mode": "center"})
        transforms.append((setting, pre, create_transform(**cfg)))

    def worst_diffs(i, path):
        with Image.open(path) as im:
            gray = im.mode == "L"
            img = im.convert("RGB")  # timm's dataset decode
        ours_decoded = load_image(path)  # our own decode from the file, once for its settings
        diffs = {}
        for k in range(PER_IMAGE):  # the settings in turn: each one on 3 of every 11 photos, 272 or more of 1000
            setting, pre, tf = transforms[(i * PER_IMAGE + k) % len(transforms)]
            ref = tf(img).numpy()
            ours = preprocess_image(ours_decoded, pre)
            assert ours.shape == ref.shape and ours.dtype == np.float32
            diffs[setting] = float(np.abs(ours - ref).max())
        return gray, diffs

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow and torch release the GIL
        results = list(pool.map(worst_diffs, range(len(files)), [path for path, _ in files]))
    gray = sum(g for g, _ in results)
    worst = {s: max(d[s] for _, d in results if s in d) for s in SETTINGS}
    checked = {s: sum(s in d for _, d in results) for s in SETTINGS}
    print({f"{i}/{c}/{s}": w for (i, c, s), w in worst.items()}, checked)
    assert min(checked.values()) >= len(files) * PER_IMAGE // len(SETTINGS)
    assert gray == 23
    assert {i for i, _, _ in SETTINGS} >= {"bilinear", "bicubic"}
    assert max(worst.values()) <= 1e-6


def test_vdsp_params_describe_the_pipeline():
    pre = next(c for c in list_models() if c.name == "cspresnet50").preprocessing
    params = vdsp_params(pre)
    json.dumps(params)
    assert params["resize"]["short_side"] == 288 and params["center_crop"]["width"] == 256
    assert params["mean"] == [0.485, 0.456, 0.406] and params["color_order"] == "RGB"


def test_table_normalize_gives_the_bits_of_the_arithmetic():
    """normalize() looks values up; the table must hold exactly what float32 (x/255 - mean)/std gives, for
    every pixel value in every channel, for every mean/std in the zoo."""
    from cvzoo.preprocess import normalize
    every = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=-1)[None]  # (1, 256, 3): each value per channel
    distinct = {(tuple(c.preprocessing.mean), tuple(c.preprocessing.std)): c.preprocessing for c in list_models()}
    for pre in distinct.values():
        arithmetic = (every.astype(np.float32) / np.float32(255.0) - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        assert np.array_equal(normalize(every, pre), arithmetic.transpose(2, 0, 1))
