"""manifest.json as one typed record: what an artifact is, how it was made, and the sha256 of its files.

Torch-free and onnx-free (the deploy side reads it). Every writer builds a `Manifest` and every reader gets one, so a
misspelt or missing field fails where it is made, not three modules later. `format_version` 2 groups the tensors
under `io`; version 1 manifests (top-level `inputs` / `outputs`) are read and upgraded in memory."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .buildconfig import GuardConfig, QuantizeConfig
from .card import ModelCard, Preprocessing

FORMAT_VERSION = 2
Precision = Literal["fp32", "fp16", "bf16", "int8"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Record(BaseModel):
    """A build's measurements: typed where code reads them; further keys are kept (older and newer builds
    recorded more or less), never dropped."""
    model_config = ConfigDict(extra="allow")


class Tensor(_Section):
    name: str
    shape: list[Union[int, str]]  # "batch": dynamic
    dtype: str
    layout: Optional[str] = None


class IO(_Section):
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[Tensor] = Field(min_length=1)


class FileEntry(_Section):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Weights(_Section):
    """The checkpoint the model was exported from, or why there was none."""
    path: Optional[str] = None
    sha256: Optional[str] = None
    random_init: Optional[str] = None

    @model_validator(mode="after")
    def _one(self):
        if (self.sha256 is None) == (self.random_init is None):
            raise ValueError("weights: exactly one of sha256 (a checkpoint) or random_init")
        return self


class Verification(_Record):
    passed: bool
    criterion: str = "direct"  # or vs a float64 run, where PyTorch fp32 itself is further than the tolerance
    max_abs_diff: float
    max_abs_diff_random: Optional[float] = None
    max_abs_diff_real: Optional[float] = None
    top1_agreement_real: Optional[float] = None
    tolerance: float
    ort_vs_fp64: Optional[float] = None
    torch_fp32_vs_fp64: Optional[float] = None


class Export(_Record):
    exporter: str
    simplified: bool
    verification: Verification


class Runtime(_Section):
    inference_precision: Optional[Literal["f16", "bf16"]] = None  # what OpenVINO applies to an fp32 graph
    graph_optimization: Optional[str] = None  # ONNX Runtime's level, where the build chose one


class FidelityRecord(_Record):
    """quantize.guard.Fidelity as written: the quantized model vs fp32 on held-out images."""
    images: int
    agreement: float
    max_abs_diff: float
    expected_drop: Optional[float] = None
    expected_ci95: Optional[tuple[float, float]] = None
    top1_drop: Optional[float] = None
    kl: Optional[float] = None
    beyond_ranges: int = 0
    beyond_expected_drop: Optional[float] = None


class Int8Layers(_Section):
    int8: int
    all: int


class LayerError(_Section):
    node: str
    op: str
    sqnr_db: Optional[float] = None  # None: identical to fp32 (a layer kept in float with nothing quantized above it)


class Quantization(QuantizeConfig, _Record):
    model_config = ConfigDict(extra="allow")
    form: str
    format_chosen: str
    weights_chosen: str
    quantize_outputs_chosen: bool
    measured_with: str
    plan: dict[str, Any]
    excluded_nodes: list[str] = Field(default_factory=list)
    float_head: Optional[str] = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    int8_layers_at_runtime: Optional[Int8Layers] = None  # builds before the runtime count did not record it
    form_timings_b1_s: dict[str, float] = Field(default_factory=dict)
    form_timings_b8_s: dict[str, float] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    speedup_vs_fp32: dict[str, float] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    layer_sqnr_db: list[LayerError] = Field(default_factory=list)


class Guard(GuardConfig, _Record):
    model_config = ConfigDict(extra="allow")
    passed: Optional[bool] = None  # None: guard off, nothing judged
    labelled: bool = False
    tolerance: Optional[float] = None
    before: Optional[FidelityRecord] = None
    after: Optional[FidelityRecord] = None
    held_out: list[str] = Field(default_factory=list)
    calibration_outliers: list[dict[str, Any]] = Field(default_factory=list)
    held_out_beyond_ranges: list[dict[str, Any]] = Field(default_factory=list)  # measured apart, not judged


class CalibrationFile(_Section):
    path: str
    sha256: str


class Calibration(_Record):
    path: str
    count: int
    seed: int
    files: list[CalibrationFile]


class Build(_Record):
    config: dict[str, Any]
    seconds: float
    quantization: Optional[Quantization] = None
    guard: Optional[Guard] = None
    calibration: Optional[Calibration] = None
    fidelity: Optional[dict[str, FidelityRecord]] = None  # "vs_fp32"
    inference_precision_at_build: Optional[str] = None
    timings_b1_s: Optional[dict[str, float]] = None  # fp16/bf16 vs fp32 on this CPU
    note: Optional[str] = None


class Manifest(_Section):
    format_version: Literal[2] = FORMAT_VERSION
    name: str
    card: ModelCard
    preprocessing: Preprocessing
    vdsp_params: dict[str, Any]
    classes: list[tuple[str, str]]  # (synset, name)
    io: IO
    weights: Weights
    model_file: str
    engine_format: Literal["onnx"] = "onnx"
    opset: int
    precision: Precision
    engine: Optional[str] = None  # what the build measured and chose for; None: any
    runtime: Runtime = Field(default_factory=Runtime)
    export: Export
    build: Optional[Build] = None  # absent on a plain export
    degraded: Optional[str] = None  # why the build missed its target, where written anyway (--accept-degraded)
    versions: dict[str, str]
    created: Optional[str] = None
    files: dict[str, FileEntry] = Field(default_factory=dict)
    # sha256 of this manifest without this field (`content_digest`): the one file `files` cannot cover; absent in
    # artifacts written before it existed
    digest: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get("format_version", FORMAT_VERSION if "io" in data else 1)  # a draft being written: current
        if version == 1:  # v1: the tensors at top level
            data = {**{k: v for k, v in data.items() if k not in ("inputs", "outputs")},
                    "format_version": FORMAT_VERSION, "io": {"inputs": data.get("inputs"), "outputs": data.get("outputs")}}
        elif version != FORMAT_VERSION:
            raise ValueError(f"format_version {version}: written by a newer cvzoo (this one reads 1 and "
                             f"{FORMAT_VERSION}); upgrade cvzoo")
        return data

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def content_digest(data: dict) -> str:
    """sha256 of a manifest's JSON object, its `digest` left out: keys sorted, no spaces, so the same content gives
    the same digest however the file was indented."""
    body = {k: v for k, v in data.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


def field_list() -> list[str]:
    """The top-level fields, in order: what README's artifact section lists."""
    return list(Manifest.model_fields)
