"""Recovery steps that rewrite the float graph before it is quantized again: cross-layer equalization and bias
correction. Neither changes what the float network computes (equalization) or changes it by more than the error it
removes (bias correction), and neither costs speed: the int8 graph keeps every node quantized."""
from __future__ import annotations

from pathlib import Path
import numpy as np

from .graph import float_sources
from .stats import _opset, add_reduction

# f(s * x) = s * f(x) for s > 0: a channel scaled before one of these can be unscaled after it
HOMOGENEOUS = {"Relu", "LeakyRelu", "Identity"}


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            out.setdefault(i, []).append(node)
    return out


def equalizable_pairs(model) -> list[tuple]:
    """(conv1, conv2) where conv1's output reaches only conv2, directly or through one ReLU / LeakyReLU."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}

    def only_reader(tensor: str):
        r = readers.get(tensor, [])
        return r[0] if len(r) == 1 and tensor not in outputs and r[0].input[0] == tensor else None

    pairs = []
    for n1 in g.node:
        if n1.op_type != "Conv" or n1.input[1] not in inits or len(readers.get(n1.input[1], [])) != 1:
            continue
        nxt = only_reader(n1.output[0])
        if nxt is not None and nxt.op_type in HOMOGENEOUS:
            nxt = only_reader(nxt.output[0])
        if (nxt is not None and nxt.op_type == "Conv" and nxt.input[1] in inits
                and len(readers.get(nxt.input[1], [])) == 1):
            pairs.append((n1, nxt))
    return pairs


def equalize(src: Path, dst: Path, sweeps: int = 2) -> int:
    """Cross-layer equalization (Nagel et al., Data-Free Quantization, 2019): per channel c between two convs,
    conv1's output channel c is divided by s_c and conv2 reads it through weights multiplied by s_c, with
    s_c = sqrt(r1_c / r2_c) (r1: conv1's weight range of that output channel, r2: conv2's over that input
    channel). The float network is unchanged; a channel that was orders of magnitude larger than its neighbours
    no longer takes the activation's one int8 scale for itself. Returns the number of pairs."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(src))
    pairs = equalizable_pairs(model)
    inits = {i.name: i for i in model.graph.initializer}

    def get(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    for _ in range(sweeps):
        for n1, n2 in pairs:
            w1, w2 = get(n1.input[1]), get(n2.input[1])
            groups = next((a.i for a in n2.attribute if a.name == "group"), 1)
            per_group_in, per_group_out = w2.shape[1], w2.shape[0] // groups
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
            w2g = w2.reshape(groups, per_group_out, per_group_in, *w2.shape[2:])
            r2 = np.abs(w2g).max(axis=(1, *range(3, w2g.ndim))).reshape(-1)  # (groups * per_group_in,) = conv1's channels
            if r2.shape != r1.shape:
                continue
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0).astype(np.float32)
            put(n1.input[1], w1 / s.reshape(-1, *[1] * (w1.ndim - 1)))
            if len(n1.input) > 2 and n1.input[2]:
                put(n1.input[2], get(n1.input[2]) / s)
            put(n2.input[1], (w2g * s.reshape(groups, 1, per_group_in, *[1] * (w2g.ndim - 3))).reshape(w2.shape))
    onnx.save(model, str(dst))
    return len(pairs)


def bias_shifts(float_path: Path, qdq_path: Path, arrays: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """Per quantized Conv/Gemm: the mean error of its output per channel that its own quantization causes (its int8
    inputs and weights against float, both fed the float network's input), the median over images so that a few
    outlier photos do not set it. Local, like NNCF's fast bias correction: no error carried from earlier nodes."""
    import onnx
    from onnx import helper

    from ..runners import ort_session
    fm, qm = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    src = float_sources(qm)
    have = {i.name for i in qm.graph.initializer}
    float_inits = {i.name: i for i in fm.graph.initializer}
    qm.graph.initializer.extend(float_inits[s] for s in sorted(set(src.values()) - have) if s in float_inits)
    opset = _opset(qm)
    nodes = list(qm.graph.node)
    del qm.graph.node[:], qm.graph.output[:]
    extra, targets = [], []
    for n in nodes:
        if n.op_type in ("Conv", "Gemm") and n.input[0] in src:
            twin = onnx.NodeProto()
            twin.CopyFrom(n)  # reads the dequantized inputs, as the int8 graph does
            twin.name, twin.output[0] = f"{n.name}_cvzoo_int8", f"{n.output[0]}_cvzoo_int8"
            diff = f"{n.output[0]}_cvzoo_err"
            extra += [twin, helper.make_node("Sub", [twin.output[0], n.output[0]], [diff])]
            targets.append((n.name, diff, n.op_type))
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            for k, i in enumerate(n.input):
                n.input[k] = src.get(i, i)  # the float network
    qm.graph.node.extend(nodes + extra)
    for name, diff, op in targets:
        if op == "Conv":
            add_reduction(qm.graph, opset, "ReduceMean", diff, f"{diff}_mean", [2, 3])
        else:
            qm.graph.node.append(helper.make_node("Identity", [diff], [f"{diff}_mean"]))
        qm.graph.output.append(helper.make_empty_tensor_value_info(f"{diff}_mean"))
    sess = ort_session(qm)
    name = qm.graph.input[0].name
    per_image = [sess.run(None, {name: arrays[i:i + batch]}) for i in range(0, len(arrays), batch)]
    return {t[0]: np.median(np.concatenate([p[k] for p in per_image]), axis=0) for k, t in enumerate(targets)}


def correct_biases(src: Path, dst: Path, shifts: dict[str, np.ndarray]) -> int:
    """Subtract each node's shift from its bias (a bias is added where a node has none)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    n = 0
    for node in model.graph.node:
        if node.name not in shifts:
            continue
        shift = shifts[node.name].astype(np.float32)
        if len(node.input) > 2 and node.input[2] in inits:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias - shift, node.input[2]))
        else:
            name = f"{node.name}_cvzoo_bias"
            model.graph.initializer.append(numpy_helper.from_array(-shift, name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        n += 1
    onnx.save(model, str(dst))
    return n


def bias_correction(float_path: Path, qdq_path: Path, arrays: np.ndarray, dst: Path) -> int:
    return correct_biases(float_path, dst, bias_shifts(float_path, qdq_path, arrays))

