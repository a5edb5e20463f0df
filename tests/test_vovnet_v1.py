"""Issue 2: the seed article's VoVNet-v1 equals our timm-built model, weights converted from its key names."""
import pytest
import timm
import torch

from cvzoo.card import get_card
from cvzoo.checkpoint import load_weights
from cvzoo.models import create_model
from tests.reference.vovnet_seed import seed_vovnet


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["vovnet27_slim", "vovnet39", "vovnet57"])
def test_seed_vovnet_equals_ours(name, tmp_path):
    torch.manual_seed(0)
    ref = seed_vovnet(name).eval()
    _randomize_bn(ref)
    assert "stem.stem_1/conv.weight" in ref.state_dict()
    assert "stage2.OSA2_1.concat.OSA2_1_concat/conv.weight" in ref.state_dict()
    ckpt = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), ckpt)

    ours = create_model(name)
    assert load_weights(ours, get_card(name), ckpt) == "vovnet_v1"
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ref_out, our_out = ref(x), ours(x)
    assert (ref_out - our_out).abs().max().item() <= 1e-5

    # The shortcut matters: timm's vovnet39a (no shortcut) with the same weights disagrees.
    if name == "vovnet39":
        plain = timm.create_model("vovnet39a").eval()
        plain.load_state_dict(ours.state_dict())
        with torch.inference_mode():
            assert (plain(x) - our_out).abs().max().item() > 1e-2


def test_vovnet_v1_pool_is_ceil_mode():
    model = create_model("vovnet39")
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.ceil_mode and p.kernel_size == 3 and p.stride == 2 for p in pools)
