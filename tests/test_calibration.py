"""calibration: the folder's images, the seeded split into calibration and held-out parts."""
import shutil

import numpy as np
import pytest
from PIL import Image

from cvzoo.buildconfig import CalibrationConfig
from cvzoo.calibration import select_split
from cvzoo.errors import CvzooError


def _photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return sorted(folder.glob("*.png"))


def test_byte_identical_copies_count_once_so_no_image_is_on_both_sides(tmp_path):
    """A folder of 6 photos and 30 copies of one of them (in a sub-folder too): 6 images (the first of each content in
    name order), said in one line; without that, copies of one photo would be both calibrated on and judged as held
    out."""
    root = tmp_path / "calib"
    photos = _photos(root, 6)
    (root / "more").mkdir()
    for i in range(30):
        shutil.copy(photos[0], (root / "more" if i % 2 else root) / f"zz_copy{i:02d}.png")
    said = []
    calib, held = select_split(CalibrationConfig(path=root, holdout=2), say=said.append)
    assert sorted(calib + held) == photos and len(held) == 2
    assert len(said) == 1 and "30 of 36 calibration files are byte-identical copies" in said[0]
    assert "more/zz_copy01.png = img00.png" in said[0] and str(root) in said[0]
    with pytest.raises(CvzooError, match="calibration count 7 is larger than the 6 distinct images"):
        select_split(CalibrationConfig(path=root, count=7), say=said.append)


def test_a_folder_without_copies_is_split_as_it_is(tmp_path):
    photos = _photos(tmp_path / "calib", 10)
    said = []
    calib, held = select_split(CalibrationConfig(path=tmp_path / "calib", count=6, holdout=4), say=said.append)
    assert sorted(calib + held) == photos and len(calib) == 6 and not set(calib) & set(held) and said == []


def test_every_format_predict_reads_is_calibrated_on(tmp_path):
    """WebP, BMP, TIFF and GIF photos count as predict and eval count them (only JPEG and PNG did)."""
    root = tmp_path / "calib"
    photos = _photos(root, 4)
    for i, fmt in enumerate(("webp", "bmp", "tiff", "gif")):
        Image.open(photos[i]).save(root / f"other{i}.{fmt}")
    (root / "notes.txt").write_text("not an image")
    calib, held = select_split(CalibrationConfig(path=root, holdout=2), say=print)
    assert sorted(p.suffix for p in calib + held) == [".bmp", ".gif", ".png", ".png", ".png", ".png", ".tiff", ".webp"]
