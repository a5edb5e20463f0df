"""Shared test helpers. Real data lives in ../shared (CI has it; a user's clone may not: skip then)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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


def top1_torch(model, batches) -> float:
    import torch
    correct = total = 0
    with torch.inference_mode():
        for x, y in batches:
            pred = model(torch.as_tensor(np.asarray(x))).argmax(1).numpy()
            correct += int((pred == np.asarray(y)).sum())
            total += len(y)
    return 100.0 * correct / total


def batched(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory):
    """One cache for the session (and the CLI processes it starts): every build of a model reuses one verified fp32
    export, and nothing is written to the user's ~/.cache."""
    old = os.environ.get("CVZOO_CACHE")
    os.environ["CVZOO_CACHE"] = str(tmp_path_factory.mktemp("cvzoo-cache"))
    yield Path(os.environ["CVZOO_CACHE"])
    if old is None:
        os.environ.pop("CVZOO_CACHE", None)
    else:
        os.environ["CVZOO_CACHE"] = old


def eval_files(name: str) -> list[tuple[Path, int]]:
    """A model's evaluation images: the ImageNet sample for ImageNet models, Imagenette val for the fixtures."""
    return imagenette_files() if name in FIXTURE_CARDS else imagenet_sample_files()


@pytest.fixture(scope="session")
def torch_top1_ids():
    """name -> PyTorch's top-1 class for each of eval_files(name), the card's weights and preprocessing: computed
    once per session for the tests that hold cvzoo's numbers against PyTorch's."""
    import torch

    from cvzoo.card import get_card
    from cvzoo.models import create_model
    from cvzoo.preprocess import load_image, preprocess_image
    cache = {}

    def get(name):
        if name not in cache:
            card = get_card(name)
            model = create_model(card, weights="default")
            ids = []
            with torch.inference_mode():
                for chunk in batched(eval_files(name), 50):
                    x = np.stack([preprocess_image(load_image(f), card.preprocessing) for f, _ in chunk])
                    ids += model(torch.from_numpy(x)).argmax(1).tolist()
            cache[name] = np.array(ids)
        return cache[name]
    return get


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
            made[name] = cached_export(card, Path(weights) if weights else None, card.input_size)
        return made[name]
    return get
