"""OpenVINO CPU engine (pip install 'cvzoo[openvino]'): runs the fp32 ONNX, the QDQ int8 artifact, and the
fp16/bf16 builds for it (an fp32 ONNX that OpenVINO computes in the precision the manifest names)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import openvino as ov

from ..errors import CvzooError
from . import LayerTime, RuntimeSpec, mean_layer_times


class OpenVinoEngine:
    """One inference at a time (its infer requests are not shared between threads)."""
    name = "openvino"

    def __init__(self, spec: RuntimeSpec, threads: Optional[int] = None, hint: str = "LATENCY"):
        from ..machine import physical_cores
        self.threads = threads or physical_cores()
        # OpenVINO's CPU plugin defaults to bf16 where the CPU has it: an artifact runs in the precision it
        # was built and verified for (f32 unless its build asked for f16/bf16, which need AVX512-FP16 / AMX
        # or AVX512-BF16; an f16 request on a CPU with only bf16 (Zen 4) computes bf16, on one with neither f32;
        # `inference_precision` says what it computes)
        requested = spec.inference_precision or "f32"
        self.core, self.path = ov.Core(), spec.model_path
        # OpenVINO pins its threads to cores; instances that share the machine (fewer threads than
        # cores each) would all be pinned to the same first cores, so they float instead
        self.config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": hint,
                       "INFERENCE_PRECISION_HINT": requested, "ENABLE_CPU_PINNING": self.threads >= physical_cores()}
        self.compiled = self._compile(None)
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # f32/f16/bf16
        self.request = self.compiled.create_infer_request()
        # batch 1 runs on a model compiled for that shape (from its second use on, so a one-off batch of one pays no
        # compile; the logits are the same): OpenVINO's CPU plugin pays a fixed cost per inference on a dynamic shape,
        # a visible part of a small model's batch-1 latency; larger batches hide it
        self.single: Optional[ov.InferRequest] = None
        self.single_runs = 0
        shape = self.input_shape = self.compiled.input(0).get_partial_shape()
        self.single_shape = ([1] + [d.get_length() for d in shape[1:]]
                             if shape[0].is_dynamic and all(d.is_static for d in shape[1:]) else None)

    def _compile(self, shape: Optional[list[int]], profile: bool = False) -> ov.CompiledModel:
        try:
            model = self.core.read_model(str(self.path))
            if shape is not None:
                model.reshape(shape)
            return self.core.compile_model(model, "CPU", {**self.config, "PERF_COUNT": profile})
        except Exception as e:
            raise CvzooError(f"{self.path}: OpenVINO cannot compile it: {str(e).splitlines()[0]}") from None

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.input_shape.compatible(ov.PartialShape(list(x.shape))):  # a 1-thread engine returns 0 rows
            raise CvzooError(f"{self.path}: input of shape {list(x.shape)} does not fit the model's {self.input_shape}")
        request = self.request
        if list(x.shape) == self.single_shape:
            self.single_runs += 1
            if self.single is None and self.single_runs > 1:
                self.single = self._compile(self.single_shape).create_infer_request()
            request = self.single if self.single is not None else request
        request.infer({0: x})
        return np.asarray(request.get_output_tensor(0).data, dtype=np.float32).copy()

    def layer_profile(self, batch: np.ndarray, runs: int) -> list[LayerTime]:
        """OpenVINO's performance counters, on the model compiled for this batch's shape with the same settings: each
        executed layer's time, the first run (warm-up) left out."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._compile(list(x.shape), profile=True).create_infer_request()
        request.infer({0: x})
        per_run = []
        for _ in range(runs):
            request.infer({0: x})
            per_run.append([LayerTime(p.node_name, p.node_type, p.exec_type, _precision(p.exec_type),
                                      p.real_time.total_seconds() * 1000.0)
                            for p in request.profiling_info if p.status == ov.ProfilingInfo.Status.EXECUTED])
        return mean_layer_times(per_run)

    def close(self) -> None:
        self.request = self.single = self.compiled = None


def _precision(exec_type: str) -> str:
    """brgconv_avx512_I8 -> int8, jit_avx512_f32 -> fp32: the kernel's precision is the exec type's last part."""
    last = exec_type.rsplit("_", 1)[-1].lower()
    return {"i8": "int8", "u8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(last, last)


def load(spec: RuntimeSpec, threads: Optional[int] = None, **options) -> OpenVinoEngine:
    return OpenVinoEngine(spec, threads=threads, **options)
