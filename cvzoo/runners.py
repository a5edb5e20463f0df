"""Run and time an ONNX file in the making (a build's fp32, fp16 or int8 candidate) with an engine's own kernels."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def ort_session(model, threads: Optional[int] = None):
    """A CPU ONNX Runtime session for a path or an in-memory ModelProto."""
    import onnxruntime as ort

    from .engines import physical_cores
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.log_severity_level = 3
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def model_runner(model_path: Path, engine: str = "onnxruntime") -> Runner:
    """A batch -> logits function run by ONNX Runtime or by OpenVINO (whose int8 kernels, not ORT's, are what an
    OpenVINO build's guard and form search must see)."""
    if engine == "openvino":
        from .artifact import Artifact
        from .engines import load_engine
        return load_engine(Artifact(model_path.parent, {"model_file": model_path.name}), "openvino").run
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


def time_rounds(runners: dict[str, Runner], shape: tuple[int, ...], rounds: int = 5,
                seconds: float = 0.15) -> dict[str, list[float]]:
    """Seconds per run of each runner in each round (the runners take turns within a round): a ratio of two runners
    taken round by round cancels the machine's slow drifts, which on a shared 2-core machine reach 25%."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for run in runners.values():
        run(x)
    per_run: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            n, t0 = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < seconds:
                run(x)
                n += 1
            per_run[k].append((time.perf_counter() - t0) / n)
    return per_run

