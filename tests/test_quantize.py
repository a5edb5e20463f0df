"""cvzoo.quantize on small synthetic graphs: each step must help where it is built to (real ONNX Runtime quantization
and sessions, no fixtures needed), the guard's arithmetic, and the search that ties them."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cvzoo.quantize.forms import Int8Form, quantize
from cvzoo.quantize.plan import weight_family
from cvzoo.quantize.stats import image_ranges, write_ort_cache
from cvzoo.runners import run_logits

OPS = ["Conv", "Gemm", "MatMul"]
# The weights a build on this CPU measures its steps with: s8, or 7-bit without VNNI, where ONNX Runtime's u8 x s8
# kernels add pairs of products in 16 bits and full-range s8 saturates (a step's effect is then lost in that error)
REF = Int8Form(weights=weight_family("auto", "auto")[0])


def _save(path, nodes, inits, channels=4, classes=3):
    import onnx
    from onnx import helper
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, channels, 8, 8])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, classes])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _conv_chain(path, outlier: float):
    """x -> conv1 -> conv2 -> conv3 -> pool -> gemm. conv1's channel 0 is `outlier` x larger and conv2 reads it
    through a weight `outlier` x smaller: the float network does not notice, but conv2's int8 input (one scale
    per tensor) leaves its other channels a few levels each, so conv2 is the node to keep in float."""
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
    _save(path, nodes, inits)


def _centered(path: Path, x: np.ndarray) -> Path:
    """The classifier's bias set to minus its mean logit over `x`, so that fp32's top-1 varies between images."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load(str(path))
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.append(helper.make_empty_tensor_value_info("f"))
    from cvzoo.runners import ort_session
    feats = ort_session(probe).run(["f"], {"x": x})[0]
    inits = {i.name: i for i in m.graph.initializer}
    wf = numpy_helper.to_array(inits["wf"])
    inits["bf"].CopyFrom(numpy_helper.from_array((-(feats @ wf.T).mean(0)).astype(np.float32), "bf"))
    onnx.save(m, str(path))
    return path


def _int8(src: Path, dst: Path, calib: np.ndarray, how: str = "robust", exclude=("fc",), form=REF) -> Path:
    s = image_ranges(src, calib, OPS)
    cache = dst.with_suffix(".ranges.json")
    write_ort_cache(cache, s.tensors, *s.ranges(how))
    quantize(src, dst, form, list(exclude), OPS, cache=cache)
    return dst


def _rel_err(ref, got) -> float:
    return float(np.mean((ref - got) ** 2) / np.mean(ref ** 2))


def test_isolated_sensitivity_finds_the_node_whose_int8_input_is_crushed(tmp_path):
    from cvzoo.quantize.sensitivity import rank_sensitivity
    x = np.random.default_rng(1).standard_normal((32, 4, 8, 8)).astype(np.float32)
    ranks = {}
    for outlier in (1.0, 1000.0):
        fp32 = tmp_path / f"fp32-{outlier}.onnx"
        _conv_chain(fp32, outlier)
        qdq = _int8(fp32, tmp_path / f"qdq-{outlier}.onnx", x[:16], "minmax", exclude=())
        ranks[outlier] = rank_sensitivity(fp32, qdq, x[16:], ["Conv", "Gemm"])
    assert {n for n, _ in ranks[1.0]} == {n for n, _ in ranks[1000.0]} == {"conv1", "conv2", "conv3", "fc"}
    scores, before = dict(ranks[1000.0]), dict(ranks[1.0])
    assert ranks[1000.0][0][0] == "conv2" and scores["conv2"] > 20 * max(scores["conv1"], scores["conv3"], scores["fc"])
    assert scores["conv2"] > 1000 * before["conv2"]  # the outlier, not the chain, is what hurts conv2
    # without the outlier no node stands out (int8 costs each about the same)
    assert max(before.values()) < 10 * min(before.values())


def test_per_image_ranges_and_their_aggregates(tmp_path):
    """Each image's min/max of every calibrated tensor; robust = 90th percentile over images, so one image with
    30x activations does not set the range (minmax: it does; mean_minmax: it moves it by its share)."""
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(2).standard_normal((20, 4, 8, 8)).astype(np.float32)
    x[5] *= 30
    s = image_ranges(tmp_path / "fp32.onnx", x, OPS)
    assert s.tensors == ["x", "c1", "c2", "c3", "f", "logits"]
    k = s.tensors.index("x")
    per_image = x.reshape(20, -1)
    assert np.allclose(s.mins[:, k], per_image.min(1)) and np.allclose(s.maxs[:, k], per_image.max(1))
    lo, hi = {}, {}
    for how in ("robust", "mean_minmax", "minmax"):
        lo[how], hi[how] = (v[k] for v in s.ranges(how))
    assert hi["minmax"] == pytest.approx(per_image.max()) and hi["mean_minmax"] == pytest.approx(per_image.max(1).mean())
    assert hi["robust"] == pytest.approx(np.quantile(per_image.max(1), 0.9))
    assert hi["robust"] < hi["minmax"] / 10 and hi["robust"] < hi["mean_minmax"]
    typical = np.delete(per_image, 5, axis=0).max(1)
    assert typical.min() <= hi["robust"] <= typical.max()
    # per image means per image: the batch the pass runs in (an odd one, leaving a short last batch) changes nothing
    other = image_ranges(tmp_path / "fp32.onnx", x, OPS, batch=7, outputs=True)
    assert np.array_equal(other.mins, s.mins) and np.array_equal(other.maxs, s.maxs) and other.outputs.shape[0] == 20


def test_calibration_outliers_names_the_image_that_dwarfs_the_others(tmp_path):
    from cvzoo.quantize.stats import outlier_note
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(3).standard_normal((16, 4, 8, 8)).astype(np.float32)
    files = [tmp_path / f"img{i}.jpg" for i in range(16)]
    assert image_ranges(tmp_path / "fp32.onnx", x, OPS).outliers(files) == []
    x[7] *= 30
    found = image_ranges(tmp_path / "fp32.onnx", x, OPS).outliers(files)
    assert [f["file"] for f in found] == [str(files[7])] and found[0]["tensors"] >= 4 and found[0]["max_times_median"] > 10
    note = outlier_note(found, "percentile")
    assert "img7.jpg" in note and "--calibrate-mode robust" in note


def test_classifier_stays_float_so_logits_are_not_rounded(tmp_path):
    import onnx
    from cvzoo.quantize.graph import classifier
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    assert classifier(onnx.load(str(tmp_path / "fp32.onnx"))) == "fc"
    x = np.random.default_rng(4).standard_normal((16, 4, 8, 8)).astype(np.float32)
    g = onnx.load(str(_int8(tmp_path / "fp32.onnx", tmp_path / "q.onnx", x))).graph
    producer = {o: n for n in g.node for o in n.output}
    assert producer["logits"].op_type == "Gemm" and producer["logits"].input[1] == "wf"  # float weights, float out
    assert {n.name for n in g.node if n.op_type == "Conv"} == {"conv1", "conv2", "conv3"}
    assert all(n.input[1].endswith("_DequantizeLinear_Output") for n in g.node if n.op_type == "Conv")


def test_equalization_keeps_the_float_network_and_rescues_a_crushed_channel(tmp_path):
    """conv1's channel 0 is 1000x its neighbours (compensated in conv2): one int8 scale for c1 leaves the other
    channels a level or two. Equalization moves the factor into conv2's weights (per-channel int8)."""
    from cvzoo.quantize.recovery import equalizable_pairs, equalize
    import onnx
    _conv_chain(tmp_path / "fp32.onnx", 1000.0)
    assert [(a.name, b.name) for a, b in equalizable_pairs(onnx.load(str(tmp_path / "fp32.onnx")))] == \
        [("conv1", "conv2"), ("conv2", "conv3")]
    assert equalize(tmp_path / "fp32.onnx", tmp_path / "eq.onnx") == 2
    x = np.random.default_rng(5).standard_normal((64, 4, 8, 8)).astype(np.float32)
    ref, eq = run_logits(tmp_path / "fp32.onnx", x[32:]), run_logits(tmp_path / "eq.onnx", x[32:])
    assert np.abs(ref - eq).max() < 1e-3 * np.abs(ref).max()
    before = _rel_err(ref, run_logits(_int8(tmp_path / "fp32.onnx", tmp_path / "q0.onnx", x[:32]), x[32:]))
    after = _rel_err(ref, run_logits(_int8(tmp_path / "eq.onnx", tmp_path / "q1.onnx", x[:32]), x[32:]))
    assert after < before / 100, (before, after)


def _biased_net(path, small: float = 0.0035):
    """x (positive mean) -> conv (1x1, each output: one weight 1.0 and seven of `small`; per-channel int8 rounds
    the default 0.0035 to 0, so every output loses 7 x 0.0035 x mean(x)) -> pool -> gemm. A planted mean shift."""
    from onnx import helper, numpy_helper
    w = np.full((4, 8, 1, 1), small, np.float32)
    w[np.arange(4), np.arange(4)] = 1.0
    wf = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(np.zeros(3, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1)]
    _save(path, nodes, inits, channels=8)


def test_bias_correction_removes_a_planted_mean_shift(tmp_path):
    from cvzoo.quantize.recovery import bias_correction, bias_shifts
    _biased_net(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(7)
    x = (1.0 + 0.1 * rng.standard_normal((96, 8, 8, 8))).astype(np.float32)
    q0 = _int8(tmp_path / "fp32.onnx", tmp_path / "q0.onnx", x[:48])
    shift = bias_shifts(tmp_path / "fp32.onnx", q0, x[:48])["conv"]
    assert shift == pytest.approx(np.full(4, -7 * 0.0035), rel=0.15)  # the planted loss, found per channel
    assert bias_correction(tmp_path / "fp32.onnx", q0, x[:48], tmp_path / "bc.onnx") == 1
    q1 = _int8(tmp_path / "bc.onnx", tmp_path / "q1.onnx", x[:48])
    ref = run_logits(tmp_path / "fp32.onnx", x[48:])
    mean_err = [np.abs((run_logits(q, x[48:]) - ref).mean(0)).max() for q in (q0, q1)]
    assert mean_err[1] < mean_err[0] / 10, mean_err


def _relu6_net(path, constant_nodes: bool = False):
    """x -> conv (pre-activation values up to ~+-60) -> Clip(0, 6) -> conv -> gemm: the ReLU6 of MobileNets. Every
    weight of the first conv is +-6.4, exact in any symmetric int8 (its scale is 6.4 / qmax, 8 or 7 bits alike): the
    error measured is the activations'. constant_nodes: Clip's bounds from Constant nodes, not initializers (as
    PyTorch exports some graphs)."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(3)
    bounds = [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    inits = [numpy_helper.from_array(np.sign(rng.standard_normal((4, 4, 3, 3))).astype(np.float32) * 6.4, "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32) / 4, "w2"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"), *([] if constant_nodes else bounds),
             numpy_helper.from_array(rng.standard_normal((3, 256)).astype(np.float32), "wf"),
             numpy_helper.from_array(np.zeros(3, np.float32), "bf")]
    constants = [helper.make_node("Constant", [], [b.name], value=b) for b in bounds] if constant_nodes else []
    nodes = [*constants, helper.make_node("Conv", ["x", "w1", "b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6"),
             helper.make_node("Conv", ["a1", "w2", "b"], ["c2"], name="conv2"),
             helper.make_node("Flatten", ["c2"], ["f"], name="flat"),  # no pooling to average the rounding away
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1)]
    _save(path, nodes, inits)


def test_a_conv_output_q_takes_its_relu6_range(tmp_path):
    """With Q/DQ on conv outputs, conv1's Q spans Clip's [0, 6] rather than its own +-60 (ONNX Runtime drops the Clip:
    the Q saturates there): ten times finer steps where the values survive. Inputs-only placement keeps the Clip."""
    import onnx
    from cvzoo.quantize.forms import calibrated_ops
    _relu6_net(tmp_path / "fp32.onnx")
    x = (np.random.default_rng(4).integers(0, 256, (64, 4, 8, 8)) / 255).astype(np.float32)  # exact in 8 bits
    s = image_ranges(tmp_path / "fp32.onnx", x[:32], calibrated_ops(OPS))
    cache = tmp_path / "ranges.json"
    write_ort_cache(cache, s.tensors, *s.ranges("robust"))
    ref = run_logits(tmp_path / "fp32.onnx", x[32:])
    err, clips = {}, {}
    for fused in (True, False):
        dst = tmp_path / f"q-{fused}.onnx"
        quantize(tmp_path / "fp32.onnx", dst, replace(REF, fuse_activations=fused), ["fc"], OPS, cache=cache)
        clips[fused] = sum(n.op_type == "Clip" for n in onnx.load(str(dst)).graph.node)
        err[fused] = _rel_err(ref, run_logits(dst, x[32:]))
    assert clips == {True: 0, False: 1}
    assert err[True] < err[False] / 2, err


def test_constant_nodes_are_not_calibrated_as_activations(tmp_path):
    """A Clip's bounds from Constant nodes are scalars, not activations: the ranges pass reads the same tensors as
    with initializers (before, it tried to flatten them per image and ONNX Runtime refused the graph)."""
    from cvzoo.quantize.forms import calibrated_ops
    x = np.random.default_rng(4).standard_normal((4, 4, 8, 8)).astype(np.float32)
    ranges = {}
    for constant_nodes in (False, True):
        _relu6_net(tmp_path / f"{constant_nodes}.onnx", constant_nodes)
        ranges[constant_nodes] = image_ranges(tmp_path / f"{constant_nodes}.onnx", x, calibrated_ops(OPS))
    assert ranges[True].tensors == ranges[False].tensors == ["x", "c1", "a1", "c2", "f", "logits"]
    assert np.array_equal(ranges[True].maxs, ranges[False].maxs)


@pytest.mark.parametrize("engine, form, int8", [
    ("onnxruntime", Int8Form(), 3), ("onnxruntime", Int8Form(outputs=False), 2), ("onnxruntime", Int8Form(weights="u8"), 3),
    ("openvino", Int8Form(), 3), ("openvino", Int8Form(outputs=False), 3), ("openvino", Int8Form(weights="u8"), 0)])
def test_int8_layers_are_read_from_what_the_engine_compiled(tmp_path, engine, form, int8):
    """Three convs and a float classifier: what each engine computes in int8 depends on the Q/DQ form, and the build
    must see it. ONNX Runtime fuses a conv into QLinearConv only where a Q reads its output: inputs-only leaves
    conv3 (read by the pool) in float; conv1 and conv2 feed the next conv's Q. OpenVINO runs u8 weights in f32."""
    if engine == "openvino":
        pytest.importorskip("openvino")
    from cvzoo.runners import compiled_runner
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(5).standard_normal((16, 4, 8, 8)).astype(np.float32)
    run, layers = compiled_runner(_int8(tmp_path / "fp32.onnx", tmp_path / "q.onnx", x, form=form), engine)
    assert layers == (int8, 4)
    assert _rel_err(run_logits(tmp_path / "fp32.onnx", x), run(x)) < 0.05  # and it runs the model


def test_u8_weights_after_bias_correction_are_corrected_for_their_own_rounding(tmp_path):
    """7-bit weights round the planted 0.0035s to 0, u8 weights to 1/255: bias correction fitted to the 7-bit graph,
    kept when the search then switches to u8 weights, would add the 7-bit loss back on top of u8's own error."""
    from dataclasses import replace
    from itertools import count
    from types import SimpleNamespace

    from cvzoo.quantize.plan import Attempt, Plan, _step
    _biased_net(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(7)
    x = (1.0 + 0.1 * rng.standard_normal((96, 8, 8, 8))).astype(np.float32)
    ids = count()

    def qdq_graph(plan, form, written=None):
        return written or _int8(plan.float_model, tmp_path / f"q{next(ids)}.onnx", x[:48], form=replace(form, format="qdq"))

    s7 = Int8Form(weights="s7")
    plan = Plan(tmp_path / "fp32.onnx", "robust", ("s7",))
    first = Attempt(qdq_graph(plan, s7), s7, None)
    corrected, _ = _step("bias_correction", plan, first, tmp_path, x[:48], SimpleNamespace(), qdq_graph)
    u8, note = _step("weights_u8", corrected, Attempt(qdq_graph(corrected, s7), s7, None), tmp_path, x[:48],
                     SimpleNamespace(weights="auto"), qdq_graph)
    assert u8.weights == ("u8",) and u8.bias_corrected and "corrected again" in note
    ref = run_logits(tmp_path / "fp32.onnx", x[48:])
    mean_err = {k: np.abs((run_logits(qdq_graph(p, Int8Form(weights="u8")), x[48:]) - ref).mean(0)).max()
                for k, p in {"stale": replace(corrected, weights=("u8",)), "refit": u8}.items()}
    assert mean_err["refit"] < mean_err["stale"] / 5, mean_err


def test_u8_weights_are_written_asymmetric(tmp_path):
    import onnx
    from onnx import numpy_helper
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(8).standard_normal((16, 4, 8, 8)).astype(np.float32)
    g = onnx.load(str(_int8(tmp_path / "fp32.onnx", tmp_path / "u8.onnx", x, form=Int8Form(weights="u8")))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    assert inits["w2_quantized"].dtype == np.uint8 and inits["w2_zero_point"].any()
    ref = run_logits(tmp_path / "fp32.onnx", x)
    assert _rel_err(ref, run_logits(tmp_path / "u8.onnx", x)) < 0.01


@pytest.mark.parametrize("vnni, target, family", [(True, "auto", ("s8",)), (False, "auto", ("s7", "s8")),
                                                  (True, "no_vnni", ("s7",)), (False, "no_vnni", ("s7", "s8"))])
def test_weight_forms_follow_the_target_cpu(monkeypatch, vnni, target, family):
    """With VNNI, s8 only (7-bit weights run the same instruction and only lose precision). Without VNNI the 7-bit
    form is the reference; full-range s8 is offered only where it runs on the kernels it will be checked on (built on a VNNI machine for one without, it could saturate there unseen)."""
    from cvzoo.quantize import plan
    monkeypatch.setattr(plan, "has_vnni", lambda **_: vnni)
    assert plan.weight_family("auto", target) == family and plan.weight_family("u8", target) == ("u8",)


_OV_KERNELS = """
import sys, openvino as ov
m = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
print(sorted({op.get_rt_info()["primitiveType"].astype(str) for op in m.get_runtime_model().get_ops()
              if op.get_rt_info()["runtimePrecision"].astype(str) == "u8"
              and op.get_rt_info()["layerType"].astype(str) == "Convolution"}))
"""


def test_an_isa_cap_below_vnni_gives_openvino_builds_the_kernels_and_weights_of_an_avx2_cpu(tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2: OpenVINO compiles its int8 convs with AVX2 kernels (checked on the compiled graph),
    so an openvino build here measures 7-bit and full-range s8 weights as an AVX2 CPU computes them. ONNX Runtime
    does not honour the cap: its builds keep this CPU's forms."""
    import os
    import subprocess
    import sys
    pytest.importorskip("openvino")
    from cvzoo import machine
    from cvzoo.quantize import plan
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    x = np.random.default_rng(9).standard_normal((16, 4, 8, 8)).astype(np.float32)
    q = _int8(tmp_path / "fp32.onnx", tmp_path / "q.onnx", x, form=Int8Form(weights="s8", outputs=False))
    kernels = lambda env: subprocess.run([sys.executable, "-c", _OV_KERNELS, str(q)], capture_output=True, text=True,
                                         env={**os.environ, **env}, check=True).stdout
    capped = kernels({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "avx2" in capped and "avx512" not in capped, capped
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    vnni_cpu = {**machine.machine_info(), "avx512_vnni": True}
    assert not machine.has_vnni(vnni_cpu, "openvino") and machine.has_vnni(vnni_cpu, "onnxruntime")
    if machine.has_vnni(engine="onnxruntime"):
        assert plan.weight_family("auto", "auto", "openvino") == ("s7", "s8")
        assert plan.weight_family("auto", "auto", "onnxruntime") == ("s8",)


def test_equally_fast_forms_are_decided_by_accuracy():
    """s7 and s8 weights time the same within noise on a CPU without VNNI; which one is more accurate depends on the
    engine's kernels (OpenVINO on an AVX2 EPYC: s8 saturated on one model, 7-bit lost 1.9 points on another), so of
    forms within SPEED_TIE of the fastest, the one closest to fp32 is kept; a clearly faster form still wins."""
    from types import SimpleNamespace

    from cvzoo.quantize.plan import SPEED_TIE, Attempt, fastest_then_closest
    a = {w: Attempt(Path(w), Int8Form(weights=w), SimpleNamespace(kl=kl)) for w, kl in (("s7", 0.02), ("s8", 0.01))}
    tie = {"qdq-s7": 1.0, "qdq-s8": 1.0 + SPEED_TIE / 2}
    assert fastest_then_closest(list(a.values()), tie) is a["s8"]
    apart = {"qdq-s7": 1.0, "qdq-s8": 1.0 + 2 * SPEED_TIE}
    assert fastest_then_closest(list(a.values()), apart) is a["s7"]


# ---------------------------------------------------------------- the guard's arithmetic
def _logits(n=200, seed=9, classes=10, margin=4.0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, classes))
    z[np.arange(n), rng.integers(0, classes, n)] += margin
    return z.astype(np.float32)


def test_one_flipped_image_does_not_fail_the_guard():
    from cvzoo.quantize.guard import measure_fidelity
    ref = _logits()
    got = ref.copy()
    i = 17
    a = ref[i].argmax()
    got[i, (a + 1) % 10] = ref[i, a] + 1.0  # one confident flip
    for labels in (None, ref.argmax(1)):
        f = measure_fidelity(ref, got, labels)
        assert f.agreement == pytest.approx(0.995) and f.passes(0.3)  # the old 99% agreement rule would have failed
        assert 0 < f.expected_drop <= 0.5 and f.expected_ci95[0] < f.expected_drop < f.expected_ci95[1]
    assert f.top1_drop == pytest.approx(0.5) and f.drop_ci95[0] < 0.5 < f.drop_ci95[1]
    # on a small held-out set one image is worth more than the target: the tolerance is one image
    small = measure_fidelity(ref[:40], got[:40])
    assert small.tolerance(1.0) == pytest.approx(2.5) and small.passes(1.0)
    # many flips do fail
    many = ref.copy()
    for j in range(0, 200, 10):
        many[j, (ref[j].argmax() + 1) % 10] = ref[j].max() + 1.0
    assert not measure_fidelity(ref, many).passes(1.0)


def test_no_flip_among_few_images_is_not_a_zero_width_interval():
    """15 held-out images, none flipped: the drop is 0 but the interval is the rule of three's (3 / 15 = 20 points),
    not +0.00..+0.00; the expected drop cannot be below 0, the measured one can."""
    from cvzoo.quantize.guard import measure_fidelity
    ref = _logits(15)
    f = measure_fidelity(ref, ref + 0.01, ref.argmax(1))
    assert f.expected_drop == 0 and f.top1_drop == 0
    assert f.expected_ci95 == pytest.approx((0.0, 20.0)) and f.drop_ci95 == pytest.approx((-20.0, 20.0))


def test_unlabelled_drop_weighs_a_flip_by_what_fp32_was_sure_of():
    from cvzoo.quantize.guard import measure_fidelity
    ref = np.zeros((100, 3), np.float32)
    ref[:, 0] = 0.01  # fp32 cannot tell class 0 from class 1: a flip between them costs ~nothing
    got = ref.copy()
    got[:10, 1] = 0.02
    unsure = measure_fidelity(ref, got)
    assert unsure.agreement == pytest.approx(0.9) and unsure.expected_drop < 0.05  # 10 flips: 0.03 points, not 10
    sure = ref.copy()
    sure[:, 0] = 10.0
    got = sure.copy()
    got[:10, 1] = 20.0
    assert measure_fidelity(sure, got).expected_drop == pytest.approx(10.0, abs=0.01)


def test_flips_both_ways_do_not_cancel_out():
    """With labels, 15 images that int8 gets wrong and 15 that it gets right where fp32 was wrong measure a drop of
    0: the guard holds the expected drop (30 confident flips) to the target, not the measured one."""
    from cvzoo.quantize.guard import measure_fidelity
    ref = _logits()
    labels = ref.argmax(1)
    labels[:15] = (labels[:15] + 1) % 10  # fp32 is wrong on these; int8 moves them to the label
    got = ref.copy()
    for i in range(30):
        got[i, (ref[i].argmax() + 1) % 10] = ref[i].max() + 1.0
    f = measure_fidelity(ref, got, labels)
    assert f.top1_drop == pytest.approx(0.0) and f.expected_drop > 10 and not f.passes(1.0)


def test_labels_calibrate_an_underconfident_fp32_before_the_expected_drop():
    """fp32 right on 90% of the images but with small margins (as after label smoothing): its raw probabilities
    price 20 flips away from the right class at a fraction of their cost; a temperature fitted on the labels
    sharpens them (T < 1) and the expected drop more than doubles, towards the measured one."""
    from cvzoo.quantize.guard import measure_fidelity
    ref = _logits(margin=1.5)
    labels = ref.argmax(1)
    labels[180:] = (labels[180:] + 3) % 10  # fp32 is wrong on these
    got = ref.copy()
    second = np.argsort(ref, 1)[:, -2]
    got[np.arange(20), second[:20]] = ref[:20].max(1) + 0.1  # int8 moves 20 images to fp32's runner-up
    blind, seen = measure_fidelity(ref, got), measure_fidelity(ref, got, labels)
    assert seen.top1_drop == pytest.approx(10.0) and blind.temperature == 1.0 and seen.temperature < 0.7
    assert seen.expected_drop > 2 * blind.expected_drop and blind.passes(2.0) and not seen.passes(2.0)


# ---------------------------------------------------------------- the search
def _cfg(tmp_path, **guard):
    from cvzoo.buildconfig import parse_config
    return parse_config({"model": "dla34", "dtype": "int8", "calibration": {"path": str(tmp_path)},
                         "guard": guard})


def _search(tmp_path, x: np.ndarray, cfg, say=lambda m: None, labelled: bool = True):
    """quantize_int8 on tmp_path/fp32.onnx: the first 100 images calibrate, the other 200 are held out, labelled
    with fp32's own top-1 (fp32 is right on them) unless `labelled` is False."""
    from cvzoo.quantize import quantize_int8
    labels = run_logits(tmp_path / "fp32.onnx", x[100:]).argmax(1) if labelled else None
    return quantize_int8(tmp_path / "fp32.onnx", tmp_path, x[:100], [tmp_path / f"{i}.jpg" for i in range(100)],
                         x[100:], labels, cfg, "onnxruntime", say)


def _positive_images(seed: int = 12) -> np.ndarray:
    """300 8-channel images around 1.0 whose channel means differ per image (so fp32's top-1 varies)."""
    rng = np.random.default_rng(seed)
    x = 1.0 + 0.2 * rng.standard_normal((300, 8, 1, 1)) + 0.1 * rng.standard_normal((300, 8, 8, 8))
    return x.astype(np.float32)


def test_search_recovers_with_equalization_before_excluding_nodes(tmp_path):
    x = np.random.default_rng(10).standard_normal((300, 4, 8, 8)).astype(np.float32)
    _conv_chain(tmp_path / "fp32.onnx", 1000.0)
    _centered(tmp_path / "fp32.onnx", x)
    said = []
    r = _search(tmp_path, x, _cfg(tmp_path, max_top1_drop=2.0), said.append)
    assert not r.before.passes(2.0) and r.passed and r.excluded == []
    kept = [s["step"] for s in r.steps if s["kept"]]
    assert "equalization" in kept and r.plan.equalized
    assert r.fidelity.kl < r.before.kl / 10
    assert set(r.form_timings_b1_s) >= {"fp32", "qdq-s8", "qoperator-s8"}
    assert r.form.label in r.form_timings_b1_s and set(r.speedup) == {"b1", "b8"}
    assert any("recovery equalization" in line and "kept" in line for line in said)


def test_without_vnni_full_range_s8_weights_are_a_recovery_step_measured_on_the_engine(tmp_path, monkeypatch):
    """Without VNNI, 7-bit weights are the reference; whether an engine's kernels saturate full-range s8 depends on
    the engine and the model, so the first step measures s8 there and keeps it only where it is closer to fp32. The
    planted 0.006 weights round to 0 in 7 bits and to 1/127 in 8."""
    from cvzoo import machine
    from cvzoo.quantize import plan
    monkeypatch.setattr(plan, "has_vnni", lambda **_: False)
    _biased_net(tmp_path / "fp32.onnx", small=0.006)
    x = _positive_images()
    _centered(tmp_path / "fp32.onnx", x)
    r = _search(tmp_path, x, _cfg(tmp_path, max_top1_drop=0.5, max_excluded=0))
    assert not r.before.passes(0.5) and r.steps[0]["step"] == "weights_s8"
    s8 = r.steps[0]
    assert s8["kept"] == (s8["fidelity"]["kl"] < r.before.kl)
    assert r.plan.weights == (("s8", "s7") if s8["kept"] else ("s7", "s8"))
    assert {"qdq-s7", "qdq-s8"} <= set(r.form_timings_b1_s)
    if machine.has_vnni():  # this CPU's kernels do not saturate: s8 only adds precision
        assert s8["kept"] and r.passed and r.form.weights == "s8"


def test_s8_weights_past_the_stem_keep_the_convs_reading_the_image_in_7_bits(tmp_path, monkeypatch):
    """Without VNNI, the conv that reads the image sees u8 inputs over the whole range, where two 8-bit products
    overflow a 16-bit sum (OpenVINO's AVX2 kernels on dla34: s8 in that one conv alone doubled the held-out KL, in
    any other conv it changed nothing). The step gives every other conv s8 weights: here a later conv whose 0.006
    weights 7 bits round to 0."""
    import onnx
    from onnx import helper, numpy_helper

    from cvzoo.quantize import plan
    monkeypatch.setattr(plan, "has_vnni", lambda **_: False)
    _biased_net(tmp_path / "biased.onnx", small=0.006)
    m = onnx.load(str(tmp_path / "biased.onnx"))  # x -> stem (1x1, identity, 8 -> 8) -> the biased conv ...
    stem = helper.make_node("Conv", ["x", "ws", "bs"], ["s"], name="stem")
    m.graph.node[0].input[0] = "s"
    m.graph.node.insert(0, stem)
    m.graph.initializer.extend([numpy_helper.from_array(np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1), "ws"),
                                numpy_helper.from_array(np.zeros(8, np.float32), "bs")])
    onnx.save(m, str(tmp_path / "fp32.onnx"))
    x = _positive_images()
    _centered(tmp_path / "fp32.onnx", x)
    cfg = _cfg(tmp_path, max_top1_drop=0.5, max_excluded=0)
    cfg.quantize.recovery = ["weights_s8_after_stem"]
    r = _search(tmp_path, x, cfg)
    step = r.steps[0]
    assert not r.before.passes(0.5) and step["step"] == "weights_s8_after_stem" and step["kept"]
    assert r.passed and r.plan.weights[0] == "s8" and r.plan.s7_weights == ("ws",) and r.form.weights == "s8"
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(r.path)).graph.initializer}
    assert np.abs(inits["ws_quantized"]).max() <= 64 < np.abs(inits["w_quantized"]).max()


def test_held_out_photos_far_beyond_the_calibrated_ranges_are_reported_apart_not_judged(tmp_path):
    """Three unlabelled held-out images at 200x the calibration images' activations: int8 clips them (the ranges are
    set for the calibration photos) and their top-1 flips, which would fail the guard alone. They are named,
    measured apart and not judged; the other 197 pass. Labelled photos of the model's classes are its domain, and
    such images more than 5% of the held-out set are part of it: in both cases every image is judged."""
    from cvzoo.quantize.guard import measure_fidelity
    x = np.random.default_rng(13).standard_normal((300, 4, 8, 8)).astype(np.float32)
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    _centered(tmp_path / "fp32.onnx", x)
    cfg = _cfg(tmp_path, max_top1_drop=0.5, max_excluded=0)
    cfg.quantize.recovery = []
    far = [100 + i for i in (3, 50, 120)]
    x[far] *= 200
    said = []
    r = _search(tmp_path, x, cfg, said.append, labelled=False)
    assert sorted(o["index"] + 100 for o in r.beyond_ranges) == far and r.passed
    assert (r.fidelity.images, r.fidelity.beyond_ranges) == (197, 3) and r.fidelity.beyond_expected_drop > 30
    everything = measure_fidelity(run_logits(tmp_path / "fp32.onnx", x[100:]), run_logits(r.path, x[100:]))
    assert not everything.passes(0.5)  # judged with them, the same graph fails
    assert any("3 held-out image(s)" in line and "not judged" in line for line in said)
    labelled = _search(tmp_path, x, cfg, said.append)
    assert labelled.beyond_ranges == [] and labelled.fidelity.images == 200 and not labelled.passed
    assert any("every image is judged: they are labelled" in line for line in said)
    x[[100 + i for i in range(0, 200, 20)]] *= 200  # 10 more: 13 of 200
    r = _search(tmp_path, x, cfg, said.append, labelled=False)
    assert r.beyond_ranges == [] and r.fidelity.images == 200 and r.fidelity.beyond_ranges == 0 and not r.passed
    assert any("every image is judged: more than 5%" in line for line in said)
    assert not any(line.startswith("warning: guard on") for line in said)  # 200 images resolve a 2-point target


def test_a_held_out_set_too_small_for_its_target_is_said(tmp_path):
    """With 20 held-out images one image is 5 points: the guard cannot hold a 1-point target and the build says so
    (with 200 and a 2-point target it does not: test_search_recovers_with_equalization_before_excluding_nodes)."""
    from cvzoo.quantize import quantize_int8
    x = np.random.default_rng(13).standard_normal((60, 4, 8, 8)).astype(np.float32)
    _conv_chain(tmp_path / "fp32.onnx", 1.0)
    cfg = _cfg(tmp_path)
    cfg.quantize.format = "qdq"
    said = []
    quantize_int8(tmp_path / "fp32.onnx", tmp_path, x[:40], [tmp_path / f"{i}.jpg" for i in range(40)], x[40:], None,
                  cfg, "onnxruntime", said.append)
    warned = [m for m in said if m.startswith("warning: guard on 20 held-out images")]
    assert len(warned) == 1 and "one image is 5.00 points" in warned[0] and "100 held-out images resolve" in warned[0]


def test_search_that_cannot_meet_its_target_says_so(tmp_path):
    x = np.random.default_rng(11).standard_normal((300, 4, 8, 8)).astype(np.float32)
    _conv_chain(tmp_path / "fp32.onnx", 1000.0)
    _centered(tmp_path / "fp32.onnx", x)
    cfg = _cfg(tmp_path, max_top1_drop=0.5, max_excluded=0)
    cfg.quantize.recovery = []
    r = _search(tmp_path, x, cfg)
    assert r.passed is False and r.steps == [] and r.excluded == []
    assert r.fidelity.top1_drop > 0.5
