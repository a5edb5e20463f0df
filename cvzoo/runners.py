"""Run and time an ONNX file in the making (a build's fp32, fp16 or int8 candidate) with an engine's own kernels."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def ort_session(model, threads: Optional[int] = None, optimized_to: Optional[Path] = None):
    """A CPU ONNX Runtime session for a path or an in-memory ModelProto (`optimized_to`: where ORT writes the graph
    it optimized, the one it runs)."""
    import onnxruntime as ort

    from .machine import physical_cores
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.log_severity_level = 3
    if optimized_to is not None:
        opts.optimized_model_filepath = str(optimized_to)
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def model_runner(model_path: Path, engine: str = "onnxruntime") -> Runner:
    """A batch -> logits function run by ONNX Runtime or by OpenVINO (whose int8 kernels, not ORT's, are what an
    OpenVINO build's guard and form search must see)."""
    if engine == "openvino":
        from .engines import RuntimeSpec, load_engine
        return load_engine(RuntimeSpec(model_path), "openvino").run
    sess = ort_session(model_path)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def in_batches(run: Runner, arrays: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([run(arrays[i:i + batch]) for i in range(0, len(arrays), batch)])


def run_logits(model_path: Path, arrays: np.ndarray, batch: int = 16, engine: str = "onnxruntime") -> np.ndarray:
    return in_batches(model_runner(model_path, engine), arrays, batch)


def time_runners(runners: dict[str, Runner], shape: tuple[int, ...], rounds: int = 5,
                 seconds: float = 0.15) -> dict[str, float]:
    """Median seconds per run of each runner on the same seeded input. The runners take turns, `rounds` times, so a
    noisy neighbour or a clock change slows them all alike instead of the one that happened to run then."""
    return {k: float(np.median(v)) for k, v in time_rounds(runners, shape, rounds, seconds).items()}


def warm_up(run: Runner, x: np.ndarray) -> None:
    """Two runs: an engine may prepare on its second (OpenVINO compiles its batch-1 model then)."""
    run(x)
    run(x)


def time_rounds(runners: dict[str, Runner], shape: tuple[int, ...], rounds: int = 5,
                seconds: float = 0.15) -> dict[str, list[float]]:
    """Seconds per run of each runner in each round (the runners take turns within a round): a ratio of two runners
    taken round by round cancels the machine's slow drifts, which on a shared 2-core machine reach 25%."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for run in runners.values():
        warm_up(run, x)
    per_run: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            n, t0 = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < seconds:
                run(x)
                n += 1
            per_run[k].append((time.perf_counter() - t0) / n)
    return per_run


# the optimized-graph ops in which ONNX Runtime computes a conv / matmul in integers, and those it computes in float
_ORT_INT8 = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul"}
_ORT_FLOAT = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
_OV_LAYERS = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution"}
# each engine's conv / matmul layer types, as its compiled graph and its profiler name them
CONV_LAYERS = {"onnxruntime": _ORT_INT8 | _ORT_FLOAT, "openvino": _OV_LAYERS}


def compiled_runner(model_path: Path, engine: str = "onnxruntime") -> tuple[Runner, tuple[int, int]]:
    """The engine's runner for a model file and (conv / matmul layers it computes in int8, all of them), read from
    the graph it compiled: a Q/DQ graph is int8 only where the engine fuses it into integer kernels (ONNX Runtime
    runs a conv whose output has no Q as a float conv; OpenVINO runs u8 weights in f32)."""
    if engine == "openvino":
        from .engines import RuntimeSpec, load_engine
        eng = load_engine(RuntimeSpec(model_path), "openvino")
        info = [op.get_rt_info() for op in eng.compiled.get_runtime_model().get_ordered_ops()]
        precisions = [rt["runtimePrecision"].astype(str) for rt in info if rt["layerType"].astype(str) in _OV_LAYERS]
        return eng.run, (sum(p in ("u8", "i8") for p in precisions), len(precisions))
    import tempfile

    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        sess = ort_session(model_path, optimized_to=optimized)
        ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    name = sess.get_inputs()[0].name
    return (lambda x: sess.run(None, {name: x})[0]), (sum(op in _ORT_INT8 for op in ops),
                                                       sum(op in _ORT_INT8 | _ORT_FLOAT for op in ops))


def int8_layers(model_path: Path, engine: str = "onnxruntime") -> tuple[int, int]:
    return compiled_runner(model_path, engine)[1]
