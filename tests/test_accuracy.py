"""Real trained weights, loaded by cvzoo, are timm's own: the same tensors, and the same answers through an
independent route (timm + plain load_state_dict + torchvision transforms). Their accuracy on every evaluation image
is checked in test_predict.py, through the exported engine."""
import pytest
import timm
import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file

from cvzoo.card import get_card
from cvzoo.models import create_model
from tests.conftest import FIXTURE_CARDS, FIXTURES, TORCH_EVERY, imagenette_files, need


@pytest.mark.shared
@pytest.mark.parametrize("name", FIXTURE_CARDS)
def test_fixture_weights_and_answers_match_timm_with_torchvision(name, torch_top1_ids):
    card = get_card(name)
    ref = timm.create_model(card.arch, num_classes=10).eval()
    ref.load_state_dict({k: v.float() for k, v in load_file(str(need(FIXTURES) / card.weights.file)).items()})
    mine = create_model(card, weights="default").state_dict()
    assert ref.state_dict().keys() == mine.keys()
    assert all(torch.equal(v, mine[k]) for k, v in ref.state_dict().items())
    # cvzoo's preprocessing equals timm's bit for bit (test_preprocess.py, every setting), so the end-to-end check
    # runs on 100 photos of every class: those of PyTorch's reference ids, every other one
    p = card.preprocessing
    tf = T.Compose([T.Resize(p.resize_size, interpolation=getattr(T.InterpolationMode, p.interpolation.upper())),
                    T.CenterCrop(p.input_size), T.ToTensor(), T.Normalize(p.mean, p.std)])
    head = imagenette_files()[::TORCH_EVERY][::2]
    with torch.inference_mode():
        theirs = ref(torch.stack([tf(Image.open(f).convert("RGB")) for f, _ in head])).argmax(1).numpy()
    agree = float((theirs == torch_top1_ids(name)[::2]).mean())
    print(f"{name}: top-1 agreement with timm+torchvision on {len(head)} photos {agree:.2f}")
    assert agree == 1.0
