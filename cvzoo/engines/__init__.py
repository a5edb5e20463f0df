"""Engines: load a model file, run a batch of preprocessed float32 NCHW arrays, return logits. An engine
with `accepts_uint8 = True` also takes the uint8 NHWC pixels before normalization and normalizes them
itself (the GPU engine: a quarter of the bytes to send, and the arithmetic runs on the GPU).

Each engine is a module with `load(spec, threads=None, **options) -> Engine`, where `spec` is a RuntimeSpec (what
it takes to run a model file), or the whole Artifact for an engine that sets NEEDS_ARTIFACT (torch-cuda rebuilds
the network from the checkpoint the manifest names). Imported on demand: a deployed machine needs only its engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np

from ..artifact import Artifact
from ..errors import CvzooError

ENGINES = {
    "onnxruntime": "cvzoo.engines.ort",
    "openvino": "cvzoo.engines.openvino",
    "torch-cuda": "cvzoo.engines.torch_cuda",
}


@dataclass(frozen=True)
class RuntimeSpec:
    """What an engine needs to run a model file, whether or not it sits in an artifact (a build times and checks
    candidate graphs with these)."""
    model_path: Path
    precision: str = "fp32"  # what the manifest says the artifact is
    inference_precision: Optional[str] = None  # f16 / bf16 an engine applies to an fp32 graph (OpenVINO)
    built_for: Optional[str] = None  # the engine the build verified it with
    graph_optimization: Optional[str] = None  # ONNX Runtime's level, where the build chose one

    @classmethod
    def of(cls, art: Artifact) -> "RuntimeSpec":
        return cls(art.model_path, art.precision, art.inference_precision, art.manifest.engine,
                   art.manifest.runtime.graph_optimization)


class Engine(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> float32 logits (N, classes); where accepts_uint8, uint8 (N, H, W, 3) too."""

    def close(self) -> None: ...

    # optional, for `bench --layers`: `layer_profile(batch, runs) -> list[LayerTime]`, from the engine's own profiler


@dataclass(frozen=True)
class LayerTime:
    """One layer as the engine ran it, with its mean time over the profiled runs."""
    name: str
    op: str  # the engine's operation: QLinearConv, FusedConv (ONNX Runtime); Convolution (OpenVINO)
    kernel: str  # what ran it: the op on its provider (ONNX Runtime), the exec type (OpenVINO: brgconv_avx512_I8)
    precision: str  # what the kernel computes in: int8, fp32, fp16, bf16
    ms: float


def mean_layer_times(runs: list[list[LayerTime]]) -> list[LayerTime]:
    """Each layer's mean over the runs, in the order the engine ran them."""
    total: dict[str, float] = {}
    first: dict[str, LayerTime] = {}
    for run in runs:
        for layer in run:
            total[layer.name] = total.get(layer.name, 0.0) + layer.ms
            first.setdefault(layer.name, layer)
    return [LayerTime(t.name, t.op, t.kernel, t.precision, total[name] / len(runs)) for name, t in first.items()]


def accepts_uint8(engine: Engine) -> bool:
    """Whether `engine` normalizes uint8 pixels itself (preprocessing then stops after resize + crop)."""
    return bool(getattr(engine, "accepts_uint8", False))


def installed_cpu_engines() -> list[str]:
    """The CPU engines importable here: ONNX Runtime (a dependency), then OpenVINO if installed."""
    return ["onnxruntime"] + (["openvino"] if find_spec("openvino") else [])


def engine_for(art: Artifact, engine: Optional[str] = None) -> str:
    """The engine asked for, else the one the artifact was built for (its manifest says), else ONNX Runtime."""
    return known_engine(engine or art.manifest.engine or "onnxruntime")


def known_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise CvzooError(f"unknown engine '{engine}' (known: {', '.join(ENGINES)})")
    return engine


def check_threads(threads: Optional[int]) -> None:
    """None = the engine's default; anything below 1 is refused (engines read 0 or less as their default or fail)."""
    if threads is not None and threads < 1:
        raise CvzooError(f"--threads must be >= 1, got {threads}")


def check_engine_options(engine: Optional[str], threads: Optional[int]) -> None:
    """What can be refused before an artifact is looked up or a zoo name exported: an unknown engine, too few
    threads."""
    check_threads(threads)
    if engine is not None:
        known_engine(engine)


def load_engine(target: Union[str, Path, Artifact, RuntimeSpec], engine: Optional[str] = None,
                threads: Optional[int] = None, **options) -> Engine:
    """`target`: an artifact (folder or loaded) or a RuntimeSpec; `engine`: as asked, else the one it was built for."""
    check_threads(threads)
    if isinstance(target, RuntimeSpec):
        art, spec = None, target
        engine = known_engine(engine or spec.built_for or "onnxruntime")
    else:
        art = target if isinstance(target, Artifact) else Artifact.load(Path(target))
        spec, engine = RuntimeSpec.of(art), engine_for(art, engine)
    try:
        module = import_module(ENGINES[engine])
    except ImportError as e:
        raise CvzooError(f"engine '{engine}' is not installed ({e.name or e}); "
                         f"pip install 'cvzoo[{engine.split('-')[0]}]'") from None
    if getattr(module, "NEEDS_ARTIFACT", False):
        if art is None:
            raise CvzooError(f"{spec.model_path}: engine '{engine}' runs a built artifact, not a bare model file")
        return module.load(art, threads=threads, **options)
    return module.load(spec, threads=threads, **options)
