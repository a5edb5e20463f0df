"""What single 3x3 convolutions reach on this CPU, in GMAC/s, fp32 and int8 (Q/DQ), per engine: the
practical ceiling to hold a whole network's achieved GMAC/s against (benchmarks/cpu_engines.py writes those).

    python benchmarks/cpu_conv_peak.py --out benchmarks/results/cpu_conv_peak.json [--seconds 3]

One C -> C 3x3 convolution per ResNet/DLA stage shape (64@112 ... 512@7), batch 8, seeded random weights,
1 instance with every core. int8 is a Q/DQ graph (u8 activations, s8 per-channel weights), the form
cvzoo's int8 builds give both engines. Run on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cvzoo.machine import machine_info
from cvzoo.engines import installed_cpu_engines
from cvzoo.machine import physical_cores

SHAPES = [(64, 112), (128, 56), (256, 28), (512, 14), (512, 7)]  # (channels, height = width)
K, BATCH = 3, 8


def gmac_per_batch(c: int, hw: int) -> float:
    return BATCH * c * hw * hw * c * K * K / 1e9


def conv_model(c: int, hw: int, int8: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c, c, K, K), dtype=np.float32) * 0.05
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, c, hw, hw])
    inits, nodes, conv_in, conv_w = [], [], "x", "w"
    if int8:
        w_scale = np.abs(w).reshape(c, -1).max(axis=1) / 127
        inits += [numpy_helper.from_array(np.round(w / w_scale[:, None, None, None]).astype(np.int8), "w_q"),
                  numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
                  numpy_helper.from_array(np.zeros(c, np.int8), "w_zp"),
                  numpy_helper.from_array(np.array(4.0 / 255, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "x_zp")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
                  helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0)]
        conv_in, conv_w = "x_dq", "w_dq"
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node("Conv", [conv_in, conv_w], ["y"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "conv_peak", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def runner(engine: str, path: str, threads: int):
    if engine == "onnxruntime":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"x": x})
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def gmac_per_s(run, c: int, hw: int, seconds: float) -> float:
    x = np.random.default_rng(1).uniform(0, 4, (BATCH, c, hw, hw)).astype(np.float32)
    for _ in range(3):
        run(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(x)
        n += 1
    return n * gmac_per_batch(c, hw) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default="benchmarks/results/cpu_conv_peak.json")
    args = ap.parse_args()
    engines = installed_cpu_engines()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, hw in SHAPES:
            for dtype in ("fp32", "int8"):
                path = f"{tmp}/{dtype}.onnx"
                onnx.save(conv_model(c, hw, dtype == "int8"), path)
                for engine in engines:
                    rate = gmac_per_s(runner(engine, path, physical_cores()), c, hw, args.seconds)
                    rows.append({"channels": c, "hw": hw, "gmac_per_batch": gmac_per_batch(c, hw),
                                 "engine": engine, "dtype": dtype, "gmac_per_s": rate})
                    print(json.dumps(rows[-1]))
    report = {"machine": machine_info(), "kernel": K, "batch": BATCH, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
