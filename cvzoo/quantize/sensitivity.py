"""Node sensitivity: which quantized nodes hurt the logits most, each measured on its own."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..runners import ort_session
from .graph import float_sources


def rank_sensitivity(fp32_path: Path, qdq_path: Path, arrays: np.ndarray,
                     op_types: list[str]) -> list[tuple[str, float]]:
    """Quantized nodes, most sensitive first, by isolated sensitivity: for each node, a variant of the
    QDQ graph where only that node reads int8 inputs (everything else is rewired to the float tensors),
    scored by the relative error of the logits against fp32 (int32 biases stay quantized in every variant).
    Graph surgery, no requantization; errors in EfficientNet-like nets accumulate over many layers, so
    per-tensor SQNR ranks them poorly. A variant's proto holds only the nodes it runs (the Q/DQ it no longer
    reads are dropped) and refers to the weights, which every variant's session shares as OrtValues: per node
    one small proto and one session, not a copy, serialization and parse of the whole model (3x faster).
    Upstream of its target a variant computes what the all-float one does, so that one runs once and each
    variant only from its target on, fed those tensors (half the work again)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    fm, qm = onnx.load(str(fp32_path)), onnx.load(str(qdq_path))
    float_inits = {i.name: i for i in fm.graph.initializer}
    produced = {o for n in qm.graph.node for o in n.output} | {i.name for i in qm.graph.input}
    float_src = {dq: src for dq, src in float_sources(qm).items() if src in float_inits or src in produced}
    targets = [n.name for n in qm.graph.node if n.name and (not op_types or n.op_type in op_types)
               and any(i in float_src for i in n.input)]
    have = {i.name for i in qm.graph.initializer}
    float_weights = {s for s in float_src.values() if s in float_inits}
    qm.graph.initializer.extend(float_inits[s] for s in sorted(float_weights - have))
    shared = {}
    for init in qm.graph.initializer:
        if init.ByteSize() > 4096:  # weights; scales and zero points stay in the proto
            shared[init.name] = ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(init))
            for field in ("raw_data", "float_data", "int32_data", "int64_data"):
                init.ClearField(field)
            init.data_location = onnx.TensorProto.EXTERNAL
            init.external_data.add(key="location", value="cvzoo-shared-initializer")
    nodes, inits = list(qm.graph.node), list(qm.graph.initializer)
    del qm.graph.node[:], qm.graph.initializer[:]
    outputs = {o.name for o in qm.graph.output}
    input_name = qm.graph.input[0].name

    def rewired(node, target: Optional[str]):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        if n.name != target:
            for k, i in enumerate(n.input):
                n.input[k] = float_src.get(i, i)
        return n

    def session(live: list, needed: set, graph_inputs: Optional[list] = None, graph_outputs: Optional[list] = None):
        variant = onnx.ModelProto()
        variant.CopyFrom(qm)
        if graph_inputs is not None:
            del variant.graph.input[:]
            variant.graph.input.extend(graph_inputs)
        if graph_outputs:
            variant.graph.output.extend(graph_outputs)
        variant.graph.node.extend(live)
        variant.graph.initializer.extend(i for i in inits if i.name in needed)
        names = [n for n in shared if n in needed]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_external_initializers(names, [shared[n] for n in names])
        return ort.InferenceSession(variant.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])

    def live_nodes(target: Optional[str], cached: set) -> tuple[list, set, set]:
        """The nodes that compute the outputs (graph order is topological: walk back from them), stopping at
        tensors in `cached`; returns them, the tensors they read, and the cached ones among those."""
        live, needed, fed = [], set(outputs), set()
        for node in reversed(nodes):
            if not needed.intersection(node.output):
                continue
            n = rewired(node, target)
            live.append(n)
            for i in n.input:
                if i in cached:
                    fed.add(i)
                else:
                    needed.add(i)
        return list(reversed(live)), needed | fed, fed

    reads: dict[str, list[int]] = {}  # tensor -> the nodes that read it once rewired to float
    for k, n in enumerate(nodes):
        for i in n.input:
            reads.setdefault(float_src.get(i, i), []).append(k)

    def downstream(target: str) -> set:
        """The tensors whose values change when `target` reads int8 inputs."""
        first = next(n for n in nodes if n.name == target).output
        dirty, todo = set(first), list(first)
        while todo:
            for k in reads.get(todo.pop(), []):
                new = set(nodes[k].output) - dirty
                dirty |= new
                todo.extend(new)
        return dirty

    base_live, base_needed, _ = live_nodes(None, set())
    base_tensors = {o for n in base_live for o in n.output} - outputs | {input_name}
    plans = {t: live_nodes(t, base_tensors - downstream(t)) for t in targets}
    # the all-float graph's tensors the variants start from, and only those (held in memory for the ranking
    # images): as graph outputs they stop ONNX Runtime fusing across them; the fewer, the closer its
    # arithmetic stays to the full graph's (bit-identical scores for three of the four fixtures)
    keep = sorted(set().union(*(fed for _, _, fed in plans.values())) - {input_name})
    base = session(base_live, base_needed, graph_outputs=[onnx.helper.make_empty_tensor_value_info(t) for t in keep])
    values = dict(zip([o.name for o in base.get_outputs()], base.run(None, {input_name: arrays})))
    values[input_name] = arrays

    def logits(target: str) -> np.ndarray:
        live, needed, fed = plans[target]
        feeds = {t: values[t] for t in sorted(fed)}
        inputs = [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for t, v in feeds.items()]
        return session(live, needed, inputs).run(None, feeds)[0]

    ref = ort_session(fp32_path).run(None, {fm.graph.input[0].name: arrays})[0]
    scale = float(np.mean(ref ** 2)) or 1.0
    scores = [(t, float(np.mean((logits(t) - ref) ** 2)) / scale) for t in targets]
    return sorted(scores, key=lambda kv: -kv[1])


def layer_sqnr(fp32_path: Path, qdq_path: Path, arrays: np.ndarray, op_types: list[str]) -> list[dict]:
    """Per quantized layer, in graph order, the SQNR (dB) of its output in the int8 graph against fp32 on `arrays`:
    the error accumulated up to that layer (Hailo's layer noise analysis shows the same). For the build report;
    the QDQ graph runs unfused (ORT's optimizations off), the int8 arithmetic simulated in float."""
    import onnx
    import onnxruntime as ort
    fm, qm = onnx.load(str(fp32_path)), onnx.load(str(qdq_path))
    float_outputs = {o for n in fm.graph.node for o in n.output}
    layers = [(n.name or n.output[0], n.op_type, n.output[0]) for n in qm.graph.node
              if (not op_types or n.op_type in op_types) and n.output[0] in float_outputs]
    if not layers:
        return []

    def run(model) -> list[np.ndarray]:
        have = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=t) for _, _, t in layers if t not in have)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        return sess.run([t for _, _, t in layers], {sess.get_inputs()[0].name: arrays})

    ref, got = run(fm), run(qm)
    out = []
    for (name, op, _), r, g in zip(layers, ref, got):
        noise = float(np.sum((r.astype(np.float64) - g) ** 2))
        signal = float(np.sum(r.astype(np.float64) ** 2))
        out.append({"node": name, "op": op, "sqnr_db": round(10 * np.log10(signal / noise), 2) if noise > 0 else None})
    return out
