"""OpenVINO CPU engine (pip install 'cvzoo[openvino]'): runs the fp32 ONNX, the QDQ int8 artifact, and the
fp16/bf16 builds for it (an fp32 ONNX that OpenVINO computes in the precision the manifest names)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import openvino as ov

from ..errors import CvzooError
from . import RuntimeSpec


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, spec: RuntimeSpec, threads: Optional[int] = None, hint: str = "LATENCY"):
        from ..machine import physical_cores
        self.threads = threads or physical_cores()
        # OpenVINO's CPU plugin defaults to bf16 where the CPU has it: an artifact runs in the precision it
        # was built and verified for (f32 unless its build asked for f16/bf16, which need AVX512-FP16 / AMX
        # or AVX512-BF16; an f16 request on a CPU with only bf16 (Zen 4) computes bf16, on one with neither f32;
        # `inference_precision` says what it computes)
        requested = spec.inference_precision or "f32"
        core = ov.Core()
        try:
            model = core.read_model(str(spec.model_path))
            # OpenVINO pins its threads to cores; instances that share the machine (fewer threads than
            # cores each) would all be pinned to the same first cores, so they float instead
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                              "PERFORMANCE_HINT": hint,
                                                              "INFERENCE_PRECISION_HINT": requested,
                                                              "ENABLE_CPU_PINNING": self.threads >= physical_cores()})
        except Exception as e:
            raise CvzooError(f"{spec.model_path}: OpenVINO cannot compile it: {str(e).splitlines()[0]}") from None
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # f32/f16/bf16
        self.request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(self.request.get_output_tensor(0).data, dtype=np.float32).copy()

    def close(self) -> None:
        self.request = None
        self.compiled = None


def load(spec: RuntimeSpec, threads: Optional[int] = None, **options) -> OpenVinoEngine:
    return OpenVinoEngine(spec, threads=threads, **options)
