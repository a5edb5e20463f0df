"""Engines: load an artifact, run a batch of preprocessed float32 NCHW arrays, return logits. An engine
with `accepts_uint8 = True` also takes the uint8 NHWC pixels before normalization and normalizes them
itself (the GPU engine: a quarter of the bytes to send, and the arithmetic runs on the GPU).

Each engine is a module with `load(artifact, threads=None, **options) -> Engine`; imported on demand so
that a deployed machine only needs the engine it uses.
"""
from __future__ import annotations

import os
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


class Engine(Protocol):
    name: str
    artifact: Artifact

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> float32 logits (N, classes); where accepts_uint8, uint8 (N, H, W, 3) too."""

    def close(self) -> None: ...


def accepts_uint8(engine: Engine) -> bool:
    """Whether `engine` normalizes uint8 pixels itself (preprocessing then stops after resize + crop)."""
    return bool(getattr(engine, "accepts_uint8", False))


def physical_cores() -> int:
    """CPU cores this process may use (affinity-aware); the default thread count of CPU engines."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def installed_cpu_engines() -> list[str]:
    """The CPU engines importable here: ONNX Runtime (a dependency), then OpenVINO if installed."""
    return ["onnxruntime"] + (["openvino"] if find_spec("openvino") else [])


def engine_for(art: Artifact, engine: Optional[str] = None) -> str:
    """The engine asked for, else the one the artifact was built for (its manifest says), else ONNX Runtime."""
    engine = engine or art.get("engine") or "onnxruntime"
    if engine not in ENGINES:
        raise CvzooError(f"unknown engine '{engine}' (known: {', '.join(ENGINES)})")
    return engine


def load_engine(artifact: Union[str, Path, Artifact], engine: Optional[str] = None, threads: Optional[int] = None,
                **options) -> Engine:
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(Path(artifact))
    engine = engine_for(art, engine)
    try:
        module = import_module(ENGINES[engine])
    except ImportError as e:
        raise CvzooError(f"engine '{engine}' is not installed ({e.name or e}); "
                         f"pip install 'cvzoo[{engine.split('-')[0]}]'") from None
    return module.load(art, threads=threads, **options)
