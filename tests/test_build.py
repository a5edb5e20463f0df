"""Issue 4: int8/fp16 builds: fidelity on real trained weights, the guard, determinism, bad configs.

Calibration for the Imagenette fixtures: 200 class-balanced images of ../shared/data/imagenet-sample
(real ImageNet photos of other classes); 100 calibrate, 100 are the guard's held-out set. Evaluation:
all 1000 images of ../shared/data/imagenette-val.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from cvzoo.artifact import Artifact
from cvzoo.build import build
from cvzoo.buildconfig import load_config, parse_config
from cvzoo.errors import CvzooError
from cvzoo.predict import Predictor
from tests.conftest import IMAGENET_SAMPLE, imagenet_sample_files, imagenette_files, need

MAX_DROP = {"cspresnet50-imagenette": 0.5, "ese_vovnet19b_dw-imagenette": 0.5, "dla34-imagenette": 0.5,
            "efficientnetv2_rw_t-imagenette": 1.0}


def _top1(artifact, files) -> float:
    paths, labels = [f for f, _ in files], np.array([y for _, y in files])
    ids = np.array([p.ids[0] for p in Predictor(artifact).predict_paths(paths, topk=1, batch=50)])
    return 100.0 * float((ids == labels).mean())


def _cfg(model, tmp, **kw):
    base = dict(model=model, weights="default", dtype="int8", workspace=str(tmp),
                quantize=dict(calibrate_mode="percentile", format="qdq"),
                calibration=dict(path=str(need(IMAGENET_SAMPLE)), suffix=[".JPEG"], count=200, holdout=0.5))
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return parse_config(base)


@pytest.fixture(scope="module")
def fp32_top1(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            art = build(parse_config(dict(model=name, weights="default", workspace=str(tmp_path_factory.mktemp("f")))),
                        say=lambda m: None)
            cache[name] = _top1(art, imagenette_files())
        return cache[name]
    return get


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    """(artifact, top-1) of an int8 build, built once per (model, calibration mode, guard) in this module:
    the guarded efficientnetv2 percentile build takes minutes on 2 cores and two tests read it."""
    cache = {}

    def get(name, mode, guard=True):
        if (name, mode, guard) not in cache:
            cfg = _cfg(name, tmp_path_factory.mktemp("int8"), quantize={"calibrate_mode": mode},
                       guard={"enabled": guard})
            art = build(cfg, say=lambda m: None)
            cache[name, mode, guard] = art, _top1(art, imagenette_files())
        return cache[name, mode, guard]
    return get


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["minmax", "percentile", "entropy"])
@pytest.mark.parametrize("name", list(MAX_DROP))
def test_int8_with_guard_keeps_fixture_accuracy(name, mode, fp32_top1, int8_build):
    art, top1 = int8_build(name, mode)
    m = Artifact.load(art).manifest
    ref = fp32_top1(name)
    g = m["build"]["guard"]
    print(f"{name} {mode}: fp32 {ref:.1f} int8 {top1:.1f} (drop {ref - top1:+.1f}); guard held-out agreement "
          f"{100 * g['before']['agreement']:.0f}% -> {100 * g['after']['agreement']:.0f}% with "
          f"{len(m['build']['quantization']['excluded_nodes'])} nodes in float")
    assert m["precision"] == "int8" and len(m["build"]["calibration"]["files"]) == 100
    assert ref - top1 <= MAX_DROP[name]


@pytest.mark.shared
@pytest.mark.slow
def test_guard_off_vs_on_efficientnetv2(fp32_top1, int8_build):
    name = "efficientnetv2_rw_t-imagenette"
    (off, top_off), (on, top_on) = int8_build(name, "percentile", guard=False), int8_build(name, "percentile")
    ref = fp32_top1(name)
    print(f"{name}: fp32 {ref:.1f}, int8 guard off {top_off:.1f}, guard on {top_on:.1f}")
    assert Artifact.load(off).manifest["build"]["quantization"]["excluded_nodes"] == []
    excluded = Artifact.load(on).manifest["build"]["quantization"]["excluded_nodes"]
    assert len(excluded) > 0 and top_on > top_off + 2.0 and ref - top_on <= 1.0


@pytest.mark.shared
@pytest.mark.slow
def test_mean_minmax_efficientnetv2(fp32_top1, int8_build):
    """Two of the 100 calibration photos drive efficientnetv2_rw_t's activations to up to 73x the median image's
    (in 302 and 205 of its 327 calibrated tensors); pooled statistics (percentile) take those ranges from them,
    per-image means do not."""
    name = "efficientnetv2_rw_t-imagenette"
    pct, top_pct = int8_build(name, "percentile", guard=False)
    mmm, top_mmm = int8_build(name, "mean_minmax", guard=False)
    agree = {k: Artifact.load(a).manifest["build"]["guard"]["before"]["agreement"] for k, a in (("pct", pct),
                                                                                                  ("mmm", mmm))}
    print(f"{name}, guard off: percentile {top_pct:.1f} (held-out agreement {100 * agree['pct']:.0f}%), mean_minmax "
          f"{top_mmm:.1f} ({100 * agree['mmm']:.0f}%); fp32 {fp32_top1(name):.1f}")
    # (guarded, mean_minmax ends within 0.5 of fp32: docs/quantization.md has the command; a third guarded
    # build of this model here would cost CI minutes for a claim the percentile matrix already makes)
    assert top_mmm > top_pct + 3.0 and agree["mmm"] > agree["pct"] + 0.1
    # the guarded percentile build names them (and the manifest keeps the list)
    outliers = Artifact.load(int8_build(name, "percentile")[0]).manifest["build"]["guard"]["calibration_outliers"]
    assert {"n01537544_indigo_bunting.JPEG", "n01693334_green_lizard.JPEG"} <= {Path(o["file"]).name for o in outliers}


@pytest.mark.shared
@pytest.mark.slow
def test_lite0_int8_on_imagenet_sample_disjoint_halves(tmp_path):
    cfg = load_config(Path("configs/tf_efficientnet_lite0_int8.yaml"))
    cfg.calibration.path = need(IMAGENET_SAMPLE)
    cfg.workspace = tmp_path
    art = build(cfg, say=print)
    used = {f["path"] for f in Artifact.load(art).manifest["build"]["calibration"]["files"]}
    used |= set(Artifact.load(art).manifest["build"]["guard"]["held_out"])
    rest = [(f, y) for f, y in imagenet_sample_files() if str(f) not in used]
    assert len(rest) == 500
    fp32 = build(parse_config(dict(model="tf_efficientnet_lite0", weights="default", workspace=str(tmp_path))),
                 say=lambda m: None)
    a, b = _top1(fp32, rest), _top1(art, rest)
    print(f"tf_efficientnet_lite0 on the held-out 500: fp32 {a:.1f} int8 {b:.1f}")
    assert a - b <= 1.0


@pytest.mark.shared
def test_build_is_deterministic_and_records_settings(tmp_path):
    cfg = _cfg("dla34-imagenette", tmp_path, calibration={"count": 40}, guard={"enabled": False})
    a = build(cfg, say=lambda m: None)
    b = build(cfg.model_copy(update={"name": "again"}), say=lambda m: None)
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    m = json.loads((a / "manifest.json").read_text())
    q = m["build"]["quantization"]
    assert q["calibrate_mode"] == "percentile" and q["per_channel"] is True and q["format_chosen"] == "qdq"
    assert all(len(f["sha256"]) == 64 for f in m["build"]["calibration"]["files"])
    assert m["build"]["fidelity"]["vs_fp32"]["agreement"] > 0.8


@pytest.mark.shared
def test_auto_format_measures_candidates(tmp_path):
    art = build(_cfg("dla34-imagenette", tmp_path, calibration={"count": 40}, quantize={"format": "auto"},
                     guard={"enabled": False}), say=lambda m: None)
    t = Artifact.load(art).manifest["build"]["quantization"]["form_timings_b1_s"]
    assert {"fp32", "qdq", "qdq-reduce_range", "qoperator", "qoperator-reduce_range"} <= set(t)
    chosen = Artifact.load(art).manifest["build"]["quantization"]["form"]
    assert t[chosen] == min(v for k, v in t.items() if k != "fp32")


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name", ["dla34-imagenette", "ese_vovnet19b_dw-imagenette", "cspresnet50-imagenette"])
def test_openvino_int8_keeps_fixture_accuracy(name, tmp_path, fp32_top1):
    """An int8 build for OpenVINO: Q/DQ placement timed and the guard measured with OpenVINO's own int8 kernels
    (which differ from ONNX Runtime's, e.g. on CPUs without VNNI); evaluated with OpenVINO."""
    pytest.importorskip("openvino")
    art = build(_cfg(name, tmp_path, engine="openvino", quantize={"format": "auto"}), say=lambda m: None)
    q = Artifact.load(art).manifest["build"]["quantization"]
    assert q["measured_with"] == "openvino" and {"qdq", "qdq-inputs_only"} <= set(q["form_timings_b1_s"])
    top1, ref = _top1(art, imagenette_files()), fp32_top1(name)
    print(f"{name} openvino int8 ({q['form']}, {len(q['excluded_nodes'])} nodes in float): top-1 {top1:.1f} "
          f"vs fp32 {ref:.1f}; b1 ms {q['form_timings_b1_s']}")
    assert ref - top1 <= MAX_DROP[name]


@pytest.mark.shared
@pytest.mark.parametrize("outputs", [True, False])
def test_qdq_placement(outputs, tmp_path):
    """Q/DQ on conv outputs too (ONNX Runtime's QLinearConv form) or on conv inputs only (NNCF's placement,
    which lets OpenVINO fuse the activation); both compute the same network."""
    import onnx
    art = build(_cfg("dla34-imagenette", tmp_path, calibration={"count": 40}, guard={"enabled": False},
                     quantize={"quantize_outputs": outputs}), say=lambda m: None)
    g = onnx.load(str(art / "model.onnx")).graph
    conv_outputs = {n.output[0] for n in g.node if n.op_type == "Conv"}
    dq_outputs = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert all(n.input[0] in dq_outputs and n.input[1] in dq_outputs for n in g.node if n.op_type == "Conv")
    assert any(n.op_type == "QuantizeLinear" and n.input[0] in conv_outputs for n in g.node) == outputs
    q = Artifact.load(art).manifest["build"]["quantization"]
    assert q["quantize_outputs_chosen"] == outputs and q["form"] == ("qdq" if outputs else "qdq-inputs_only")
    assert q["measured_with"] == "onnxruntime"
    assert Artifact.load(art).manifest["build"]["fidelity"]["vs_fp32"]["agreement"] > 0.8


def _conv_chain(path, outlier: float):
    """x -> conv1 -> conv2 -> conv3 -> pool -> gemm. conv1's channel 0 is `outlier` x larger and conv2 reads it
    through a weight `outlier` x smaller: the float network does not notice, but conv2's int8 input (one scale
    per tensor) leaves its other channels a few levels each, so conv2 is the node to keep in float."""
    import onnx
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    w = {f"w{i}": rng.standard_normal((4, 4, k, k)).astype(np.float32) / (4 * k) for i, k in ((1, 3), (2, 1), (3, 1))}
    w["w1"][0] *= outlier
    w["w2"][:, 0] /= outlier
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, f"b{i}") for i in (1, 2, 3)]
    inits += [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "wf"),
              numpy_helper.from_array(np.zeros(3, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], name="conv3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_isolated_sensitivity_finds_the_node_whose_int8_input_is_crushed(tmp_path):
    """The guard's ranking on a network built so that one node's quantization is the damage (real ONNX Runtime
    quantization and sessions, no fixtures needed)."""
    from cvzoo.build import CALIBRATION_CACHE, Int8Form, _quantize, rank_sensitivity
    from cvzoo.buildconfig import QuantizeConfig
    from cvzoo.calibration import ArrayReader
    x = np.random.default_rng(1).standard_normal((32, 4, 8, 8)).astype(np.float32)
    ranks = {}
    for outlier in (1.0, 1000.0):
        fp32, qdq = tmp_path / f"fp32-{outlier}.onnx", tmp_path / f"qdq-{outlier}.onnx"
        _conv_chain(fp32, outlier)
        _quantize(fp32, qdq, ArrayReader(x[:16], "x"), QuantizeConfig(calibrate_mode="minmax"), Int8Form("qdq", False),
                  [], tmp_path / f"{outlier}-{CALIBRATION_CACHE}")
        ranks[outlier] = rank_sensitivity(fp32, qdq, x[16:], ["Conv", "Gemm"])
    assert {n for n, _ in ranks[1.0]} == {n for n, _ in ranks[1000.0]} == {"conv1", "conv2", "conv3", "fc"}
    scores, before = dict(ranks[1000.0]), dict(ranks[1.0])
    assert ranks[1000.0][0][0] == "conv2" and scores["conv2"] > 20 * max(scores["conv1"], scores["conv3"], scores["fc"])
    assert scores["conv2"] > 1000 * before["conv2"]  # the outlier, not the chain, is what hurts conv2
    # without the outlier no node stands out (int8 costs each about the same)
    assert max(before.values()) < 10 * min(before.values())


def test_mean_minmax_is_the_mean_of_each_images_range(tmp_path):
    """mean_minmax (NNCF's per-tensor default): the range of a tensor is each calibration image's min/max averaged,
    so one image with extreme activations no longer sets it, as it does for minmax (real ORT quantization)."""
    import onnx
    from onnx import numpy_helper
    from cvzoo.build import CALIBRATION_CACHE, Int8Form, _quantize, calibration_reader
    from cvzoo.buildconfig import QuantizeConfig
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(2).standard_normal((16, 4, 8, 8)).astype(np.float32)
    x[5] *= 30  # the outlier image
    scale = {}
    for mode in ("minmax", "mean_minmax"):
        q = QuantizeConfig(calibrate_mode=mode)
        _quantize(tmp_path / "fp32.onnx", tmp_path / f"{mode}.onnx", calibration_reader(x, "x", q), q,
                  Int8Form("qdq", False), [], tmp_path / f"{mode}-{CALIBRATION_CACHE}")
        g = onnx.load(str(tmp_path / f"{mode}.onnx")).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        quantize_x = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
        scale[mode] = float(inits[quantize_x.input[1]])
    per_image = x.reshape(16, -1)
    expect = {"minmax": (max(x.max(), 0) - min(x.min(), 0)) / 255,  # uint8: the range always holds 0
              "mean_minmax": (max(per_image.max(1).mean(), 0) - min(per_image.min(1).mean(), 0)) / 255}
    assert scale == pytest.approx(expect, rel=1e-5)
    assert scale["mean_minmax"] < scale["minmax"] / 5


def test_calibration_outliers_names_the_image_that_dwarfs_the_others(tmp_path):
    from cvzoo.build import calibration_outliers, outlier_note
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(3).standard_normal((16, 4, 8, 8)).astype(np.float32)
    files = [tmp_path / f"img{i}.jpg" for i in range(16)]
    tensors = ["x", "c1", "c2", "c3", "not-in-the-graph"]
    assert calibration_outliers(tmp_path / "fp32.onnx", x, files, tensors) == []
    x[7] *= 30
    found = calibration_outliers(tmp_path / "fp32.onnx", x, files, tensors)
    assert [f["file"] for f in found] == [str(files[7])] and found[0]["of"] == 4 and found[0]["tensors"] >= 3
    assert found[0]["max_times_median"] > 10
    assert "img7.jpg" in outlier_note(found, "percentile") and "mean_minmax" in outlier_note(found, "percentile")


@pytest.mark.shared
def test_fp16_build(tmp_path):
    art = build(parse_config(dict(model="dla34-imagenette", weights="default", dtype="fp16", workspace=str(tmp_path))),
                say=lambda m: None)
    import onnx
    m = onnx.load(str(art / "model.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept float32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    fid = Artifact.load(art).manifest["build"]["fidelity"]["vs_fp32"]
    assert fid["agreement"] == 1.0 and fid["max_abs_diff"] < 0.05
    pred = Predictor(art).predict(sorted(need(IMAGENET_SAMPLE).glob("*.JPEG"))[0])
    assert len(pred.ids) == 5


HALF_CASES = [(name, "bf16") for name in MAX_DROP] + [("efficientnetv2_rw_t-imagenette", "fp16")]


@pytest.mark.shared
@pytest.mark.parametrize("name, dtype", HALF_CASES)
def test_openvino_half_precision_keeps_fixture_accuracy(name, dtype, tmp_path, fp32_top1):
    """fp16/bf16 for OpenVINO: the fp32 graph computed in half precision where the CPU has it (AVX512-FP16,
    AMX/AVX512-BF16). Where it does not, OpenVINO computes another precision (an fp16 request runs bf16 on a Zen 4
    EPYC, which has AVX512-BF16 but no FP16; f32 with neither), and the artifact must say so, not pretend."""
    pytest.importorskip("openvino")
    art = build(parse_config(dict(model=name, weights="default", dtype=dtype, engine="openvino", workspace=str(tmp_path),
                                  calibration=dict(path=str(need(IMAGENET_SAMPLE)), suffix=[".JPEG"], count=50))),
                say=lambda m: None)
    m = Artifact.load(art).manifest
    wanted = {"fp16": "f16", "bf16": "bf16"}[dtype]
    assert m["precision"] == dtype and m["engine"] == "openvino" and m["runtime"] == {"inference_precision": wanted}
    predictor = Predictor(art)  # the engine the artifact was built for, without --engine
    assert predictor.engine.name == "openvino"
    computes = predictor.engine.inference_precision
    assert computes == m["build"]["inference_precision_at_build"] and computes in (wanted, "bf16", "f32")
    fid = m["build"]["fidelity"]["vs_fp32"]
    assert fid["images"] == 50
    timings = m["build"]["timings_b1_s"]  # speed vs fp32 measured by the build (its note says when slower)
    assert set(timings) == {"fp32", dtype} and min(timings.values()) > 0
    # a half-precision run differs from fp32 a little; a silent f32 fallback not at all
    assert (fid["max_abs_diff"] > 1e-3) if computes != "f32" else (fid["max_abs_diff"] < 1e-3)
    top1, ref = _top1(art, imagenette_files()), fp32_top1(name)
    print(f"{name} openvino {dtype} (computes {computes}): top-1 {top1:.1f} vs fp32 {ref:.1f}; "
          f"agreement on 50 ImageNet photos {100 * fid['agreement']:.0f}%, max|Δlogit| {fid['max_abs_diff']:.3f}")
    assert ref - top1 <= 0.5
    with pytest.raises(CvzooError, match="ONNX Runtime would run its fp32 graph instead"):
        Predictor(art, engine="onnxruntime")


def test_a_half_precision_slower_than_fp32_is_said_with_the_fast_one():
    """What the build says from its b1 timings (seconds). The numbers are this Xeon's dla34 (AVX512-FP16 and
    AMX-BF16, no AMX-FP16): OpenVINO f16 34 ms, f32 22 ms, bf16 5 ms."""
    from cvzoo.build import half_slower_note
    xeon = {"amx_bf16": True, "amx_fp16": False}
    note = half_slower_note("fp16", "f16", {"fp32": 0.022, "fp16": 0.034}, xeon)
    assert note.startswith("note: fp16 is slower than fp32 with openvino here (34.0 vs 22.0 ms at b1, computing f16)")
    assert "--dtype bf16 is its fast half precision" in note
    assert half_slower_note("bf16", "bf16", {"fp32": 0.022, "bf16": 0.005}, xeon) is None
    assert half_slower_note("fp16", "f32", {"fp32": 0.022, "fp16": 0.023}, xeon) is None  # a fallback: noise
    # no bf16 advice where the CPU has no AMX for it, or has AMX for fp16 too
    for machine in ({"amx_bf16": False, "amx_fp16": False}, {"amx_bf16": True, "amx_fp16": True}):
        assert "--dtype bf16" not in half_slower_note("fp16", "f16", {"fp32": 0.022, "fp16": 0.034}, machine)


def test_bf16_build_for_torch_cuda_measures_bf16_on_the_cpu(tmp_path):
    """Built on a machine without a GPU: the fidelity recorded is that of bf16 arithmetic (torch on the CPU),
    and ONNX Runtime refuses the artifact rather than run its fp32 graph under a bf16 label."""
    art = build(parse_config(dict(model="dla46_c", dtype="bf16", engine="torch-cuda", workspace=str(tmp_path))),
                say=lambda m: None)
    m = Artifact.load(art).manifest
    fid = m["build"]["fidelity"]["vs_fp32"]
    assert m["precision"] == "bf16" and m["engine"] == "torch-cuda" and "runtime" not in m
    assert fid["images"] == 8 and 1e-3 < fid["max_abs_diff"] < 1.0  # bf16 rounding: visible, small
    with pytest.raises(CvzooError, match="to compute in bf16 .* use --engine torch-cuda"):
        Predictor(art, engine="onnxruntime")


@pytest.mark.parametrize("data,message", [
    (dict(model="dla35"), "unknown model 'dla35'"),
    (dict(model="dla34", weights="/nonexistent/dla34.pth"), "weights file not found"),
    (dict(model="dla34", dtype="int4"), "dtype: Input should be 'fp32', 'fp16', 'bf16' or 'int8'"),
    (dict(model="dla34", dtype="bf16"), "config: dtype bf16 needs engine openvino (CPU) or torch-cuda"),
    (dict(model="dla34", dtype="int8"), "needs a calibration set"),
    (dict(model="dla34", quantize=dict(format="qoperator", quantize_outputs=False)),
     "quantize: quantize_outputs false needs format qdq or auto"),
    (dict(model="dla34", quantize=dict(calibrate_mod="entropy")), "unknown key 'quantize.calibrate_mod' (did you mean 'calibrate_mode'?)"),
    (dict(model="dla34", dtyp="int8"), "unknown key 'dtyp' (did you mean 'dtype'?)"),
])
def test_bad_configs(tmp_path, data, message):
    data = {"workspace": str(tmp_path / "ws"), **data}
    with pytest.raises(CvzooError) as e:
        build(parse_config(data), say=lambda m: None)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "ws").exists() or list((tmp_path / "ws").iterdir()) == []


def test_bad_calibration_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "few").mkdir()
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(tmp_path / "few" / f"{i}.jpg")
    for folder, count, message in [("empty", 10, "has no images"), ("few", 10, "count 10 is larger than the 3 images")]:
        cfg = parse_config(dict(model="dla46_c", dtype="int8", workspace=str(tmp_path / "ws"),
                                calibration=dict(path=str(tmp_path / folder), count=count)))
        with pytest.raises(CvzooError, match=message):
            build(cfg, say=lambda m: None)
    assert not (tmp_path / "ws").exists()


def test_cli_typo_in_yaml_is_one_line(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: dla34\ndtype: int8\nquantize:\n  calibrate_mode: kl_divergence\n  per_chanel: true\n")
    proc = subprocess.run([sys.executable, "-m", "cvzoo", "build", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown key 'quantize.per_chanel' (did you mean 'per_channel'?)" in proc.stderr
