"""ONNX Runtime engine (CPU by default): the deploy-side default, needs only numpy + onnxruntime."""
from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import CvzooError
from . import LayerTime, RuntimeSpec, mean_layer_times

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# a kernel's first input, as the profiler names its type -> the precision it computes in
_DTYPES = {"float": "fp32", "float16": "fp16", "bfloat16": "bf16", "uint8": "int8", "int8": "int8"}


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, spec: RuntimeSpec, threads: Optional[int] = None, providers: Sequence[str] = (),
                 graph_optimization: Optional[str] = None):
        from ..machine import physical_cores
        computes = spec.inference_precision or ("bf16" if spec.precision == "bf16" else None)
        if computes:  # the model file is the fp32 graph; another engine applies the precision
            raise CvzooError(f"{spec.model_path.parent}: built for {spec.built_for} to compute in {computes} "
                             f"(precision {spec.precision}); ONNX Runtime would run its fp32 graph instead, not "
                             f"what the build verified - use --engine {spec.built_for}")
        self.path, self.threads = spec.model_path, threads or physical_cores()
        self.level = graph_optimization or spec.graph_optimization or "all"
        self.providers = list(providers) or ["CPUExecutionProvider"]
        self.session = self._session()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._input_type = self.session.get_inputs()[0].type
        self._input_shape = self.session.get_inputs()[0].shape  # ints where fixed, names where dynamic

    def _session(self, profile_prefix: Optional[str] = None) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = _OPT_LEVELS[self.level]
        opts.log_severity_level = 3
        if profile_prefix:
            opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CvzooError(f"{self.path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None

    def _input(self, batch: np.ndarray) -> np.ndarray:
        want = self._input_shape
        if len(batch.shape) != len(want) or any(isinstance(w, int) and w != d for w, d in zip(want, batch.shape)):
            raise CvzooError(f"{self.path}: input of shape {list(batch.shape)} does not fit the model's {want}")
        return np.ascontiguousarray(batch, dtype=np.float16 if "float16" in self._input_type else np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: self._input(batch)})[0]
        return out.astype(np.float32, copy=False)

    def layer_profile(self, batch: np.ndarray, runs: int) -> list[LayerTime]:
        """ONNX Runtime's profiler on a second session with the same options: each node's kernel time, the first
        run (warm-up) left out."""
        import json
        import tempfile
        x = {self.input_name: self._input(batch)}
        with tempfile.TemporaryDirectory() as tmp:
            session = self._session(str(Path(tmp) / "ort"))
            for _ in range(runs + 1):
                session.run([self.output_name], x)
            events = json.loads(Path(session.end_profiling()).read_text())
        starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
        per_run: list[list[LayerTime]] = [[] for _ in starts]
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            args = e.get("args", {})
            op, provider = args.get("op_name", ""), args.get("provider", "").removesuffix("ExecutionProvider")
            first_input = next(iter((args.get("input_type_shape") or [{}])[0]), "")
            per_run[max(0, bisect_right(starts, e["ts"]) - 1)].append(
                LayerTime(e["name"].removesuffix("_kernel_time"), op, f"{op} ({provider})",
                          _DTYPES.get(first_input, first_input), e["dur"] / 1000.0))
        return mean_layer_times(per_run[1:])

    def close(self) -> None:
        self.session = None


def load(spec: RuntimeSpec, threads: Optional[int] = None, **options) -> OrtEngine:
    return OrtEngine(spec, threads=threads, **options)
