"""Issue 2: real trained weights score what they should with the card's preprocessing."""
import numpy as np
import pytest
import timm
import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file

from cvzoo.card import get_card
from tests.conftest import (FIXTURE_CARDS, FIXTURES, README_TOP1, batched, imagenet_sample_files,
                            imagenette_files, need, top1_torch)


def _top1(ids, files) -> float:
    return 100.0 * float((ids == np.array([y for _, y in files])).mean())


@pytest.mark.shared
@pytest.mark.parametrize("name", FIXTURE_CARDS)
def test_fixture_accuracy_matches_timm_with_torchvision(name, torch_top1_ids):
    card = get_card(name)
    files = imagenette_files()
    ours = _top1(torch_top1_ids(name), files)  # cvzoo's model and preprocessing

    # independent route: timm model + plain load_state_dict + torchvision transforms, same settings
    ref = timm.create_model(card.arch, num_classes=10).eval()
    ref.load_state_dict({k: v.float() for k, v in load_file(str(need(FIXTURES) / card.weights.file)).items()})
    p = card.preprocessing
    tf = T.Compose([T.Resize(p.resize_size, interpolation=getattr(T.InterpolationMode, p.interpolation.upper())),
                    T.CenterCrop(p.input_size), T.ToTensor(), T.Normalize(p.mean, p.std)])

    def tv_batches():
        for chunk in batched(files, 50):
            yield torch.stack([tf(Image.open(f).convert("RGB")) for f, _ in chunk]), [y for _, y in chunk]

    theirs = top1_torch(ref, tv_batches())
    print(f"{name}: cvzoo {ours:.1f}  timm+torchvision {theirs:.1f}  README {README_TOP1[name]}")
    assert ours == pytest.approx(theirs, abs=0.2)
    assert ours >= README_TOP1[name] - 5.0


@pytest.mark.shared
def test_lite0_imagenet_sample_top1(torch_top1_ids):
    acc = _top1(torch_top1_ids("tf_efficientnet_lite0"), imagenet_sample_files())
    print(f"tf_efficientnet_lite0 top-1 on imagenet-sample: {acc:.1f}")
    assert acc >= 85.0
