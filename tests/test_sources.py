"""Issue 6: mmcls (mmpretrain) and PaddleClas checkpoints, checked against the real source libraries.

The sources live in their own venvs (`make source-envs`; PaddleClas pins numpy 1.24), run as
subprocesses by tests/sources/dump_*.py: random-init source model -> its native checkpoint + logits (+ its
own eval preprocessing of real photos). Here cvzoo, without those libraries, converts and compares.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvzoo.card import get_card, list_models
from cvzoo.errors import CvzooError
from cvzoo.datasets import demo_images
from cvzoo.models import create_model
from cvzoo.pdparams import read_pdparams
from cvzoo.preprocess import load_image, resize_crop
from tests.conftest import IMAGENET_SAMPLE, ROOT

pytestmark = pytest.mark.xdist_group("source_dumps")  # one worker runs both libraries' dumps, once

SOURCES = Path(os.environ.get("CVZOO_SOURCE_ENVS", ROOT / ".venv-sources"))
PPCLS = {c.name: c for c in list_models() if "ppcls" in c.checkpoint}
MMCLS = {c.name: c for c in list_models() if "mmcls" in c.checkpoint}
# cvzoo card -> the source's own model name
PPCLS_NAMES = {"cspdarknet53.ppcls": "CSPDarkNet53", "dla34.ppcls": "DLA34", "dla46_c.ppcls": "DLA46_c",
               "dla46x_c.ppcls": "DLA46x_c", "dla60.ppcls": "DLA60", "dla60x.ppcls": "DLA60x",
               "dla60x_c.ppcls": "DLA60x_c", "dla102.ppcls": "DLA102", "dla102x.ppcls": "DLA102x",
               "dla102x2.ppcls": "DLA102x2", "dla169.ppcls": "DLA169"}
MMCLS_NAMES = {"cspresnet50.mmcls": "cspresnet50_3rdparty_8xb32_in1k",
               "cspresnext50.mmcls": "cspresnext50_3rdparty_8xb32_in1k",
               "cspdarknet53.mmcls": "cspdarknet50_3rdparty_8xb32_in1k"}  # sic: mmpretrain's zoo name


EXIF_ROTATED = "n02951585_can_opener.JPEG"  # stored sideways with an EXIF rotation tag


def _photos() -> list[Path]:
    """The shipped photos, plus every 4th ImageNet-sample image (250 of all sizes and aspect ratios) and the one with
    an EXIF rotation, where ../shared is present."""
    sample = sorted(IMAGENET_SAMPLE.glob("*.JPEG")) if IMAGENET_SAMPLE.is_dir() else []
    return demo_images() + [p for i, p in enumerate(sample) if i % 4 == 0 or p.name == EXIF_ROTATED]


# PaddleClas' logits at 96 px (a conversion is the same at any size; Paddle's CPU kernels are slow), but at the card's
# size for the checkpoint that test_source_checkpoint_through_export_and_onnxruntime exports and runs
EXPORTED = {"dla34.ppcls"}
DUMPS = {  # source venv -> its dump script and the (card=source name) specs it is given
    "paddleclas": ("dump_paddleclas.py",
                   [f"{card}={name}@{get_card(card).input_size if card in EXPORTED else 96}"
                    for card, name in PPCLS_NAMES.items()]),
    "mmpretrain": ("dump_mmpretrain.py", [f"{card}={name}" for card, name in MMCLS_NAMES.items()]),
}


@pytest.fixture(scope="session")
def source_dumps(tmp_path_factory) -> dict:
    """Both libraries' dumps, run at the same time (two mostly single-threaded processes): env -> its folder, or the
    reason it is missing."""
    procs, found = {}, {}
    for env, (script, specs) in DUMPS.items():
        python = SOURCES / env / "bin" / "python"
        if not python.exists():
            found[env] = f"{python} missing (make source-envs installs the real {env})"
            continue
        out = tmp_path_factory.mktemp(env)
        cmd = [str(python), str(ROOT / "tests" / "sources" / script), str(out), *specs, "--images", *map(str, _photos())]
        procs[env] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out)
    for env, (proc, out) in procs.items():
        _, err = proc.communicate(timeout=1200)
        found[env] = out if proc.returncode == 0 else AssertionError(f"{env} dump failed: {err[-3000:]}")
    return found


def _dump(source_dumps: dict, env: str) -> Path:
    got = source_dumps[env]
    if isinstance(got, Exception):
        raise got
    if isinstance(got, str):
        if os.environ.get("CI"):
            pytest.fail(f"{got}: CI must build the source venvs (make source-envs)")
        pytest.skip(got)
    return got


@pytest.fixture(scope="session")
def paddle_dump(source_dumps) -> Path:
    return _dump(source_dumps, "paddleclas")


@pytest.fixture(scope="session")
def mm_dump(source_dumps) -> Path:
    return _dump(source_dumps, "mmpretrain")


def _max_diff(card: str, checkpoint: Path, reference: Path) -> float:
    model = create_model(card, weights=checkpoint)  # checkpoint_format auto: the card's own source
    ref = np.load(reference)
    with torch.inference_mode():
        ours = model(torch.from_numpy(ref["input"])).numpy()
    assert ours.shape == ref["logits"].shape == (2, 1000)
    assert 5 < np.abs(ref["logits"]).max() < 100  # a real logit scale, so 1e-4 is a real gate
    return float(np.abs(ours - ref["logits"]).max())


def test_every_source_card_is_covered():
    assert set(PPCLS) == set(PPCLS_NAMES) and set(MMCLS) == set(MMCLS_NAMES)


@pytest.mark.zoo
@pytest.mark.parametrize("card", sorted(PPCLS_NAMES))
def test_paddleclas_checkpoint_gives_paddleclas_logits(card, paddle_dump):
    diff = _max_diff(card, paddle_dump / f"{card}.pdparams", paddle_dump / f"{card}.npz")
    print(f"{card}: max |cvzoo - PaddleClas| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.zoo
@pytest.mark.parametrize("card", sorted(MMCLS_NAMES))
def test_mmcls_checkpoint_gives_mmpretrain_logits(card, mm_dump):
    diff = _max_diff(card, mm_dump / f"{card}.pth", mm_dump / f"{card}.npz")
    print(f"{card}: max |cvzoo - mmpretrain| = {diff:.2e}")
    assert diff <= 1e-4


def _compare_crops(card: str, reference: Path) -> tuple[int, float, int]:
    """(worst level difference, fraction of values that differ, images) of our resize+crop vs the source's."""
    pre = get_card(card).preprocessing
    ref = np.load(reference)
    by_name = {p.name: p for p in _photos()}
    assert EXIF_ROTATED in ref.files or not IMAGENET_SAMPLE.is_dir()
    worst, differing, total = 0, 0, 0
    for name in ref.files:
        ours = resize_crop(load_image(by_name[name]), pre)
        assert ours.shape == ref[name].shape, name
        d = np.abs(ours.astype(np.int16) - ref[name])
        worst, differing, total = max(worst, int(d.max())), differing + int((d > 0).sum()), total + d.size
    return worst, differing / total, len(ref.files)


@pytest.mark.zoo
@pytest.mark.parametrize("card, short", [("dla34.ppcls", 256), ("cspdarknet53.ppcls", 288)])
def test_paddleclas_preprocessing_is_bit_exact(card, short, paddle_dump):
    """cv2 decode + ResizeImage(cv2 INTER_LINEAR) + CropImage, reproduced with Pillow + numpy."""
    worst, frac, n = _compare_crops(card, paddle_dump / f"preprocess-{short}-{get_card(card).input_size}.npz")
    print(f"{card}: {n} photos, worst {worst} level(s), {frac:.5%} of values differ")
    assert worst == 0


@pytest.mark.zoo
@pytest.mark.parametrize("card", sorted(MMCLS_NAMES))
def test_mmcls_preprocessing_is_bit_exact(card, mm_dump):
    worst, frac, n = _compare_crops(card, mm_dump / f"{card}-preprocess.npz")
    print(f"{card}: {n} photos, worst {worst}, {frac:.5%} differ")
    assert worst == 0


@pytest.mark.zoo
def test_source_checkpoint_through_export_and_onnxruntime(paddle_dump, mm_dump, tmp_path):
    """The other verbs take the exported artifact: export each source's file via the CLI, run ONNX Runtime."""
    from cvzoo.engines import load_engine
    for card, ckpt in (("dla34.ppcls", paddle_dump / "dla34.ppcls.pdparams"),
                       ("cspresnet50.mmcls", mm_dump / "cspresnet50.mmcls.pth")):
        out = tmp_path / card
        run = subprocess.run([sys.executable, "-m", "cvzoo", "export", card, "--weights", str(ckpt), "--out",
                              str(out)], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        ref = np.load(ckpt.with_suffix(".npz"))
        logits = load_engine(out, "onnxruntime").run(ref["input"])
        assert float(np.abs(logits - ref["logits"]).max()) <= 1e-4
        # the artifact carries the source's preprocessing rules, and predict runs on it
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["preprocessing"] == get_card(card).preprocessing.model_dump(mode="json")
        assert manifest["vdsp_params"]["exif_orientation"] is True
        jsonl = tmp_path / f"{card}.jsonl"
        run = subprocess.run([sys.executable, "-m", "cvzoo", "predict", str(out), *map(str, demo_images()),
                              "--jsonl", str(jsonl)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert len(jsonl.read_text().splitlines()) == len(demo_images())


# --- .pdparams files are data: only arrays come out, nothing else gets in ------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _write(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_pdparams_with_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _write(tmp_path / "evil.pdparams", {"fc.weight": np.zeros((2, 2), np.float32), "x": _Payload()})
    with pytest.raises(CvzooError, match=r"evil\.pdparams: refused: .*posix\.system|evil\.pdparams: refused: .*os\.system"):
        read_pdparams(bad)
    assert not (tmp_path / "pwned").exists()


def test_pdparams_with_a_non_array_object_is_refused(tmp_path):
    from collections import OrderedDict
    odd = _write(tmp_path / "odd.pdparams", {"w": np.ones(3, np.float32), "opt": OrderedDict(lr=0.1)})
    with pytest.raises(CvzooError, match=r"odd\.pdparams: refused: .*collections\.OrderedDict"):
        read_pdparams(odd)
    plain = _write(tmp_path / "plain.pdparams", {"w": np.ones(3, np.float32), "epoch": 7, "name": "x"})
    with pytest.raises(CvzooError, match=r"plain\.pdparams: refused: entries that are not numeric arrays: "
                                         r"'epoch' \(int\), 'name' \(str\)"):
        read_pdparams(plain)
    objects = _write(tmp_path / "objects.pdparams", {"w": np.array([1, "a"], dtype=object)})
    with pytest.raises(CvzooError, match=r"objects\.pdparams: refused"):
        read_pdparams(objects)


def test_pdparams_reads_arrays_and_skips_paddles_name_table(tmp_path):
    arrays = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bn._mean": np.zeros(3, np.float32)}
    path = _write(tmp_path / "ok.pdparams", {**arrays, "StructuredToParameterName@@": {"fc.weight": "linear_0.w_0"}})
    got = read_pdparams(path)
    assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)


def test_bad_pdparams_files_get_one_clear_line(tmp_path):
    good = _write(tmp_path / "good.pdparams", {"w": np.ones((64, 64), np.float32)})
    cut = tmp_path / "cut.pdparams"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CvzooError, match=r"cut\.pdparams: not a readable \.pdparams file"):
        read_pdparams(cut)
    empty = tmp_path / "empty.pdparams"
    empty.write_bytes(b"")
    with pytest.raises(CvzooError, match=r"empty\.pdparams: checkpoint file is empty"):
        read_pdparams(empty)
    with pytest.raises(CvzooError, match=r"list\.pdparams: a \.pdparams file must hold a dict"):
        read_pdparams(_write(tmp_path / "list.pdparams", [np.ones(2)]))


def test_pdparams_on_a_card_of_another_source_names_the_right_card(tmp_path):
    path = _write(tmp_path / "dla.pdparams", {"w": np.ones(2, np.float32)})
    with pytest.raises(CvzooError, match=r"a PaddleClas \.pdparams checkpoint, but dla34 takes timm/ucbdrive "
                                         r"checkpoints; use dla34\.ppcls"):
        create_model("dla34", weights=path)


def test_converted_ppcls_tensors_land_where_they_should(tmp_path):
    """Without PaddleClas: Paddle BN names, [in, out] Linear weights, top-level fc -> timm's head.fc."""
    model = create_model("cspdarknet53.ppcls")
    sd = model.state_dict()
    rng = np.random.default_rng(0)
    paddle_sd = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        arr = rng.standard_normal(tuple(value.shape)).astype(np.float32)
        key = key.replace("running_mean", "_mean").replace("running_var", "_variance").replace("head.fc", "fc")
        paddle_sd[key] = arr.T.copy() if arr.ndim == 2 else arr
    loaded = create_model("cspdarknet53.ppcls", weights=_write(tmp_path / "c.pdparams", paddle_sd)).state_dict()
    assert np.array_equal(loaded["head.fc.weight"].numpy(), paddle_sd["fc.weight"].T)
    assert np.array_equal(loaded["stem.conv1.bn.running_var"].numpy(), paddle_sd["stem.conv1.bn._variance"])
    assert np.array_equal(loaded["stages.4.conv_transition.bn.running_mean"].numpy(),
                          paddle_sd["stages.4.conv_transition.bn._mean"])
