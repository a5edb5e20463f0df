"""Shared test helpers. Real data lives in ../shared (CI has it; a user's clone may not: skip then)."""
from __future__ import annotations

import os
from pathlib import Path

# `make test` runs one pytest-xdist worker per core. Each worker is pinned to its own core before numpy or torch
# start their thread pools: the engines size theirs to the cores a process may use (machine.physical_cores), so two
# workers never run four spinning engine threads on two cores.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
if _WORKER and _ALL_CPUS:
    _n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if len(_ALL_CPUS) >= _n:
        os.sched_setaffinity(0, _ALL_CPUS[int(_WORKER.removeprefix("gw")) % _n::_n])

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CVZOO_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
IMAGENET_SAMPLE = DATA / "imagenet-sample"
IMAGENETTE_VAL = DATA / "imagenette-val"
FIXTURES = DATA / "fixtures"
FIXTURE_CARDS = ["cspresnet50-imagenette", "ese_vovnet19b_dw-imagenette", "dla34-imagenette",
                 "efficientnetv2_rw_t-imagenette"]
# top-1 listed in ../shared/README.md (1500-image subset at training time)
README_TOP1 = {"cspresnet50-imagenette": 84.2, "ese_vovnet19b_dw-imagenette": 82.5,
               "efficientnetv2_rw_t-imagenette": 73.5, "dla34-imagenette": 80.5}
LITE0_IMAGENET_SAMPLE_TOP1 = 85.0  # tf_efficientnet_lite0's floor on the 1000 ImageNet photos (it scores ~88)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is only on developer/CI machines)")
    return path


def imagenet_sample_files() -> list[tuple[Path, int]]:
    """(file, class index) for the 1000 ImageNet images; index = sorted synset position."""
    files = sorted(need(IMAGENET_SAMPLE).glob("*.JPEG"))
    synsets = sorted({f.name.split("_")[0] for f in files})
    return [(f, synsets.index(f.name.split("_")[0])) for f in files]


def imagenette_files() -> list[tuple[Path, int]]:
    root = need(IMAGENETTE_VAL)
    synsets = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(f, i) for i, s in enumerate(synsets) for f in sorted((root / s).glob("*.JPEG"))]


def batched(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@pytest.fixture
def all_cores():
    """The test runs on every core of the machine, not only its worker's (for what only shows with several)."""
    if not _ALL_CPUS:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _ALL_CPUS)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def session_dir(tmp_path_factory, name: str) -> Path:
    """A folder every worker of this test session shares (pytest-xdist gives each worker its own temp root)."""
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if _WORKER else root) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory):
    """One cache for the session, its workers and the CLI processes they start: every build of a model reuses one
    verified fp32 export (cached_export locks it while one exports), and nothing is written to the user's
    ~/.cache."""
    old = os.environ.get("CVZOO_CACHE")
    os.environ["CVZOO_CACHE"] = str(session_dir(tmp_path_factory, "cvzoo-cache"))
    yield Path(os.environ["CVZOO_CACHE"])
    if old is None:
        os.environ.pop("CVZOO_CACHE", None)
    else:
        os.environ["CVZOO_CACHE"] = old


def eval_files(name: str) -> list[tuple[Path, int]]:
    """A model's evaluation images: the ImageNet sample for ImageNet models, Imagenette val for the fixtures."""
    return imagenette_files() if name in FIXTURE_CARDS else imagenet_sample_files()


# PyTorch's own top-1 is computed on every 5th evaluation image (200 of 1000, every class): the export is verified
# against PyTorch per model and the preprocessing equals timm's bit for bit (test_preprocess.py), so this subset checks
# the pipeline end to end; the accuracy itself is taken from predict on every image
TORCH_EVERY = 5


def _once(tmp_path_factory, folder: str, name: str, compute):
    """compute() -> a JSON-able value, computed by whichever worker of the session asks first, then read back."""
    import json

    from filelock import FileLock
    path = session_dir(tmp_path_factory, folder) / f"{name}.json"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            path.write_text(json.dumps(compute()))
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def torch_top1_ids(tmp_path_factory):
    """name -> PyTorch's top-1 class for each of eval_files(name)[::TORCH_EVERY], the card's weights and preprocessing:
    computed once per session for the tests that hold cvzoo's numbers against PyTorch's."""
    def compute(name):
        import torch

        from cvzoo.card import get_card
        from cvzoo.models import create_model
        from cvzoo.preprocess import load_image, preprocess_image
        card = get_card(name)
        model = create_model(card, weights="default")
        ids = []
        with torch.inference_mode():  # batch 8: depthwise nets run twice as fast in eager as at 50 (cache)
            for chunk in batched(eval_files(name)[::TORCH_EVERY], 8):
                x = np.stack([preprocess_image(load_image(f), card.preprocessing) for f, _ in chunk])
                ids += model(torch.from_numpy(x)).argmax(1).tolist()
        return ids
    return lambda name: np.array(_once(tmp_path_factory, "torch-top1", name, lambda: compute(name)))


@pytest.fixture(scope="session")
def fp32_predictions(tmp_path_factory, artifacts):
    """name -> `predict` of the fp32 artifact on every image of eval_files(name) (batch 32), as a list of
    {"path", "ok", "ids", "probs"}, best first: top-5, or every class of a fixture (10), whose fp32 probabilities the
    int8 tests then have whole. One run per session, which test_predict holds to PyTorch and the eval, int8 and
    half-precision tests compare with."""
    def compute(name):
        from cvzoo.card import get_card
        from cvzoo.predict import Predictor
        k = 10 if get_card(name).num_classes <= 10 else 5
        preds = Predictor(artifacts(name)).predict_paths([f for f, _ in eval_files(name)], topk=k, batch=32)
        return [{"path": p.path, "ok": p.ok, "ids": list(map(int, p.ids)), "probs": list(map(float, p.probs))}
                for p in preds]
    return lambda name: _once(tmp_path_factory, "fp32-predictions", name, lambda: compute(name))


def top1_of(ids, files) -> float:
    """Top-1 accuracy (%) of predicted class ids against the (file, label) pairs."""
    return 100.0 * float((np.asarray(ids) == np.array([y for _, y in files])).mean())


@pytest.fixture(scope="session")
def lite0_weights():
    from cvzoo.card import get_card
    from cvzoo.checkpoint import resolve_default_weights
    return resolve_default_weights(get_card("tf_efficientnet_lite0"))


@pytest.fixture(scope="session")
def artifacts(export_cache):
    """Export on first use, once per session: name -> artifact dir (default weights where the card has them). The
    session's export cache, which builds start from too: one export and verification per model."""
    from cvzoo.card import get_card
    from cvzoo.checkpoint import find_default_weights
    from cvzoo.export import cached_export
    made = {}

    def get(name, weights="default"):
        if name not in made:
            card = get_card(name)
            if weights == "default":
                weights = find_default_weights(card)
                if weights is None:
                    pytest.skip(f"{name}: its weights file is not here (../shared is only on developer/CI machines)")
            made[name] = cached_export(card, Path(weights) if weights else None, card.input_size).folder
        return made[name]
    return get


@pytest.fixture
def artifact_copy(artifacts, tmp_path):
    """A private copy of the exported tf_efficientnet_lite0 artifact, safe to damage."""
    import shutil
    dst = tmp_path / "art"
    shutil.copytree(artifacts("tf_efficientnet_lite0"), dst)
    return dst


@pytest.fixture(scope="session")
def effnetv2_generic_int8(tmp_path_factory):
    """efficientnetv2_rw_t-imagenette built int8 with the defaults on ImageNet photos of other classes (the case the
    guard, the recovery steps and the report are about): (artifact dir, the build's lines). Built once per session."""
    from cvzoo.build import build
    from cvzoo.buildconfig import parse_config
    said: list[str] = []
    art = build(parse_config(dict(model="efficientnetv2_rw_t-imagenette", weights="default", dtype="int8",
                                  workspace=str(tmp_path_factory.mktemp("effv2")),
                                  calibration=dict(path=str(need(IMAGENET_SAMPLE))))), say=said.append)
    return art, said


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """Two fixtures x {fp32, int8} swept locally with benchmarks (limited eval): (out dir, table, sweep arguments).
    Calibration: 60 of the ImageNet photos, 40 calibrating and 20 held out (the sweep is tested, not the guard)."""
    from cvzoo.sweep import sweep
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    calib = tmp_path_factory.mktemp("sweep-calib")
    for photo in sorted(need(IMAGENET_SAMPLE).glob("*.JPEG"))[::16][:60]:
        (calib / photo.name).symlink_to(photo)
    kw = dict(calib=calib, count=40, limit=200, bench=True, bench_seconds=0.5)
    models = ["dla34-imagenette", "ese_vovnet19b_dw-imagenette"]
    table = sweep(models, ["fp32", "int8"], need(IMAGENETTE_VAL), out, say=print, **kw)
    return out, table, dict(models=models, **kw)


CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by Playwright (its own browsers are a download this machine cannot make)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM:
        pytest.skip("no chromium here (Debian: apt-get install chromium; CI's .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, url: str):
    """The page, what it logged as errors and every URL it asked for."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, urls = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: urls.append(r.url))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors, urls


def screenshot(page, name: str) -> bytes:
    """A full-page PNG; the top of the page (1200 x 1100) kept in $CVZOO_SCREENSHOTS where set (README's screenshots
    are made this way)."""
    keep = os.environ.get("CVZOO_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(keep) / name), clip={"x": 0, "y": 0, "width": 1200, "height": 1100},
                        full_page=True)
    return page.screenshot(full_page=True)


def not_blank(png: bytes) -> bool:
    """Text and bars on the page, not one flat colour."""
    import io
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return pixels.std() > 10 and (pixels < 128).mean() > 0.005
