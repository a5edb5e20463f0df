"""Issue 2: checkpoint files, wrappers, strictness, and refusing code in pickles."""
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

from cvzoo.card import get_card
from cvzoo.checkpoint import read_state_dict
from cvzoo.errors import CvzooError
from cvzoo.models import create_model

CARD = get_card("dla46_c")  # the smallest DLA: fast


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    model = create_model(CARD)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    return model


def _same(model, reference):
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        return (model(x) - reference(x)).abs().max().item() == 0.0


@pytest.mark.parametrize("suffix,wrap", [
    (".pth", None), (".pth.tar", "state_dict"), (".pth", "model"), (".pth", "state_dict_ema"),
    (".safetensors", None), ("-module.pth", "module"),
])
def test_formats_and_wrappers(tmp_path, reference, suffix, wrap):
    sd = reference.state_dict()
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        if wrap == "module":
            obj = {f"module.{k}": v for k, v in sd.items()}
        elif wrap:
            obj = {wrap: sd, "epoch": 90, "arch": "dla46_c"}
        else:
            obj = sd
        torch.save(obj, path)
    model = create_model(CARD, weights=path)
    assert _same(model, reference)


def test_fp16_checkpoint_is_upcast(tmp_path, reference):
    path = tmp_path / "half.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous()
               for k, v in reference.state_dict().items()}, str(path))
    sd = read_state_dict(path)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    create_model(CARD, weights=path)  # loads strictly


def test_truncated_file(tmp_path, reference):
    good = tmp_path / "good.pth"
    torch.save(reference.state_dict(), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CvzooError, match=r"truncated\.pth: not a readable checkpoint"):
        create_model(CARD, weights=bad)
    st = tmp_path / "truncated.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "g.safetensors"))
    st.write_bytes((tmp_path / "g.safetensors").read_bytes()[:1000])
    with pytest.raises(CvzooError, match="not a readable safetensors file"):
        create_model(CARD, weights=st)


def test_empty_and_missing_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CvzooError, match="empty"):
        create_model(CARD, weights=tmp_path / "empty.pth")
    with pytest.raises(CvzooError, match="not found"):
        create_model(CARD, weights=tmp_path / "nope.pth")


def test_wrong_architecture_lists_keys(tmp_path):
    path = tmp_path / "vovnet.pth"
    torch.save(create_model("vovnet27_slim").state_dict(), path)
    with pytest.raises(CvzooError) as e:
        create_model(CARD, weights=path)
    msg = str(e.value)
    assert "does not fit dla46_c" in msg and "missing" in msg and "unexpected" in msg
    assert "base_layer.0.weight" in msg and "\n" not in msg


def test_wrong_number_of_classes(tmp_path):
    path = tmp_path / "ten.pth"
    torch.save(create_model("dla34-imagenette").state_dict(), path)
    with pytest.raises(CvzooError, match=r"wrong number of classes: checkpoint has 10, card has 1000.*mis-shaped.*fc\.weight"):
        create_model("dla34", weights=path)


def test_num_classes_gives_a_new_head_and_loads_the_rest_strictly(tmp_path, reference):
    """timm's `pretrained=True, num_classes=N`: the checkpoint's classifier is dropped, every other tensor loads, a
    checkpoint that does not fit is still refused; timm keyword arguments pass through."""
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(CARD, weights=path, num_classes=5, drop_rate=0.25)
    head = {"fc.weight", "fc.bias"}
    assert model.num_classes == 5 and model.state_dict()["fc.weight"].shape[0] == 5
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]
    mine, ref = model.state_dict(), reference.state_dict()
    assert set(mine) == set(ref) and all(torch.equal(mine[k], ref[k]) for k in ref if k not in head)
    assert not torch.equal(create_model(CARD, weights=path, num_classes=5).state_dict()["fc.bias"][:5],
                           ref["fc.bias"][:5])  # a fresh classifier, not a slice of the old one
    broken = {k: v for k, v in ref.items() if not k.startswith("base_layer")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CvzooError, match="missing"):
        create_model(CARD, weights=tmp_path / "broken.pth", num_classes=5)


class _Payload:
    """A pickle that would run a shell command on load (what torch.load without weights_only allows)."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, reference):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": reference.state_dict(), "x": _Payload(marker)}, f)
    torch.save({"state_dict": reference.state_dict(), "x": _Payload(marker)}, tmp_path / "evil2.pth")
    # a bare pickle is no PyTorch file (torch stops at its first opcode); torch.save's names the code it would call
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CvzooError, match=r"evil\.pth: not a readable checkpoint \(not a PyTorch file"):
            create_model(CARD, weights=path)
    assert not [w for w in seen if "pickle protocol" in str(w.message)]  # torch's warning printed two more lines
    with pytest.raises(CvzooError, match=r"refused: the checkpoint pickle asks to import or call code \(posix\.system\)"):
        create_model(CARD, weights=tmp_path / "evil2.pth")
    assert not marker.exists()


def test_cli_bad_checkpoint_is_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    proc = subprocess.run([sys.executable, "-m", "cvzoo", "export", "dla46_c", "--weights",
                           str(tmp_path / "junk.pth"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "junk.pth" in lines[0] and "Traceback" not in proc.stderr
    # bytes that are no pickle are not called code, and torch's advice to load with weights_only=False is not passed on
    assert "not a readable checkpoint (not a PyTorch file, or corrupt)" in lines[0] and "weights_only" not in lines[0]
    assert not (tmp_path / "out").exists()
