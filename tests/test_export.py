"""Issue 3: ONNX export parity for every zoo model, artifact contents, atomic writes."""
import json

import onnx
import pytest

from cvzoo import export as export_mod
from cvzoo.artifact import Artifact
from cvzoo.card import networks
from cvzoo.errors import CvzooError
from cvzoo.export import FP32_TOLERANCE, export

BIG = {"efficientnetv2_rw_m", "efficientnetv2_rw_s", "dla169", "dla102x2", "dla102x", "dla102", "vovnet57",
       "cspdarknet53", "ese_vovnet39b"}
# one card per network: the mmcls / ppcls cards reuse their timm card's architecture (test_sources.py)
ZOO = [c.name for c in networks()]


@pytest.mark.zoo
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in ZOO])
def test_export_parity_every_zoo_model(name, tmp_path):
    # random weights and 128 px: parity is about the graph (every op of it runs at any size); the card's own size is
    # exported in the fixture, lite0 and manifest tests
    exported = export(name, out=tmp_path / name, size=128)
    art = Artifact.load(exported.folder, verify_hashes=True)
    assert art.manifest == exported.manifest  # what export returns is what it wrote
    v = art.manifest.export.verification
    assert v.passed
    if v.criterion == "direct":
        assert v.max_abs_diff <= FP32_TOLERANCE
    else:  # deep DLAs: PyTorch fp32 itself is further than 1e-4 from float64; ORT must be as close as it
        assert v.ort_vs_fp64 <= v.torch_fp32_vs_fp64 + FP32_TOLERANCE
        assert name.startswith("dla")
    assert art.manifest.io.inputs[0].shape[0] == "batch"


@pytest.mark.zoo
def test_tf_same_padding_is_constant_in_the_graph(tmp_path):
    """timm's TF 'same' padding depends on the input size; at 240 px (tf_efficientnet_lite1's card) onnxslim folded
    its shape arithmetic into wrong logits, so the unsimplified graph shipped with 15 Shape nodes and 645 nodes in all.
    The pads are constants in the export."""
    exported = export("tf_efficientnet_lite1", out=tmp_path / "a", size=240)
    ops = [n.op_type for n in onnx.load(str(exported.model_path)).graph.node]
    assert exported.manifest.export.simplified and exported.manifest.export.verification.passed
    assert "Shape" not in ops and "Pad" not in ops and ops.count("Conv") == 64


def test_artifact_is_self_describing(tmp_path):
    out = export("dla46_c", out=tmp_path / "a", batch=4, opset=13).folder
    m = json.loads((out / "manifest.json").read_text())
    assert m["opset"] == 13 and m["precision"] == "fp32" and m["io"]["inputs"][0]["shape"] == [4, 3, 224, 224]
    assert m["preprocessing"]["crop_pct"] == 0.875 and len(m["classes"]) == 1000
    assert m["classes"][0] == ["n01440764", "tench, Tinca tinca"]
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(m["versions"])
    assert set(m["files"]) == {"model.onnx", "vdsp_params.json"}
    model = onnx.load(str(out / "model.onnx"))
    assert model.opset_import[0].version == 13
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_existing_output_is_not_overwritten_without_force(tmp_path):
    out = export("dla46_c", out=tmp_path / "a").folder
    with pytest.raises(CvzooError, match="already exists"):
        export("dla46_c", out=out)
    export("dla46_c", out=out, force=True, size=192)
    assert Artifact.load(out).preprocessing.input_size == 192


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("simulated crash during verification")
    monkeypatch.setattr(export_mod, "verify_onnx", broken)
    with pytest.raises(RuntimeError):
        export("dla46_c", out=tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_verification_failure_is_loud(tmp_path, monkeypatch):
    real = export_mod.verify_onnx

    def off(*a, **k):
        v = real(*a, **k)
        v.max_abs_diff_random, v.ort_vs_fp64, v.torch_fp32_vs_fp64 = 1.0, 1.0, 1e-5  # a broken graph
        return v
    monkeypatch.setattr(export_mod, "verify_onnx", off)
    with pytest.raises(CvzooError, match="export verification failed"):
        export("dla46_c", out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_simplified_graph_kept_only_when_verified(tmp_path):
    assert export("ese_vovnet19b_dw", out=tmp_path / "s").manifest.export.simplified is True
    assert export("ese_vovnet19b_dw", out=tmp_path / "p", simplify=False).manifest.export.simplified is False


def test_cached_export_is_made_once_and_remade_when_modified(monkeypatch, tmp_path):
    """build() takes its fp32 from this cache: a second build of the same model skips export and verification; a
    cached model whose bytes no longer match its manifest is exported again, not used."""
    from cvzoo.card import get_card
    from cvzoo.export import cached_export
    monkeypatch.setenv("CVZOO_CACHE", str(tmp_path))
    calls = []
    real = export_mod.export
    monkeypatch.setattr(export_mod, "export", lambda *a, **k: calls.append(k.get("size")) or real(*a, **k))
    card = get_card("dla46_c")
    first = cached_export(card, None, 96).folder
    assert cached_export(card, None, 96).folder == first and calls == [96]
    assert cached_export(card, None, 128).folder != first and calls == [96, 128]  # another size: another export
    model = first / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert cached_export(card, None, 96).folder == first and calls == [96, 128, 96]
    Artifact.load(first, verify_hashes=True)  # the copy in the cache is whole again


def test_builds_at_once_share_one_export(monkeypatch, tmp_path):
    """Two builds of one model at once (a sweep's jobs, test workers): one exports, the other waits for it and takes
    the same folder, instead of exporting again and replacing the folder under the first one's readers."""
    from concurrent.futures import ThreadPoolExecutor

    from cvzoo.card import get_card
    from cvzoo.export import cached_export
    monkeypatch.setenv("CVZOO_CACHE", str(tmp_path))
    calls = []
    real = export_mod.export
    monkeypatch.setattr(export_mod, "export", lambda *a, **k: calls.append(k.get("size")) or real(*a, **k))
    card = get_card("dla46_c")
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: cached_export(card, None, 64).folder, range(2)))
    assert calls == [64] and folders[0] == folders[1]
    assert [p.name for p in (tmp_path / "exports").iterdir() if p.is_dir()] == [folders[0].name]

