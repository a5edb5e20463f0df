"""Issue 2: foreign key layouts load into our models and give the same logits."""
import pytest
import torch

from cvzoo.card import get_card
from cvzoo.checkpoint import load_weights, read_state_dict
from cvzoo.models import create_model
from tests.reference.ucbdrive_dla import DLA34


def test_ucbdrive_dla34_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = DLA34().eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = ref.state_dict()
    assert "level3.project.0.weight" in sd  # the dead non-leaf project of the original layout
    # the extra project convs are what the seed table's ucbdrive row counts on top of timm's (0.042M)
    extra = sum(v.numel() for k, v in sd.items() if k.startswith(("level3.project", "level4.project")) and
                "num_batches" not in k and "running" not in k)
    assert round(extra / 1e6, 3) == round(get_card("dla34").published_row("ucbdrive").params_m
                                          - get_card("dla34").published_row("timm").params_m, 3)
    path = tmp_path / "dla34-ucbdrive.pth"
    torch.save(sd, path)
    ours = create_model("dla34")
    assert load_weights(ours, get_card("dla34"), path) == "ucbdrive"
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-5


def test_lukemelas_lite_round_trip(tmp_path, lite0_weights):
    # the real PyPI checkpoint is in the lukemelas layout and loads strictly by position
    raw = read_state_dict(lite0_weights)
    assert "_blocks.0._depthwise_conv.weight" in raw
    ours = create_model("tf_efficientnet_lite0")
    assert load_weights(ours, get_card("tf_efficientnet_lite0"), lite0_weights) == "lukemelas_lite"
    # and a timm-layout copy of the same weights gives identical logits
    path = tmp_path / "lite0-timm.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    again = create_model("tf_efficientnet_lite0", weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert (again(x) - ours(x)).abs().max().item() == 0.0


def test_lukemelas_shape_mismatch_fails_strictly(tmp_path, lite0_weights):
    from cvzoo.errors import CvzooError
    with pytest.raises(CvzooError, match="does not fit tf_efficientnet_lite1"):
        create_model("tf_efficientnet_lite1", weights=lite0_weights)
