"""ONNX Runtime engine (CPU by default): the deploy-side default, needs only numpy + onnxruntime."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import CvzooError
from . import RuntimeSpec

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


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
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = graph_optimization or spec.graph_optimization or "all"
        opts.graph_optimization_level = _OPT_LEVELS[level]
        opts.log_severity_level = 3
        self.threads = opts.intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(spec.model_path), sess_options=opts,
                                                providers=list(providers) or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CvzooError(f"{spec.model_path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._input_type = self.session.get_inputs()[0].type

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float16 if "float16" in self._input_type else np.float32)
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None


def load(spec: RuntimeSpec, threads: Optional[int] = None, **options) -> OrtEngine:
    return OrtEngine(spec, threads=threads, **options)
