"""`cvzoo build` configuration: YAML (the seeds' vamc config, our fields), validated with one-line errors."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CvzooError

# mean_minmax: each image's min/max, averaged over the images (NNCF's default for per-tensor activations); the
# others pool every image's values, so one image with extreme activations sets the range of a small tensor
CalibrateMode = Literal["minmax", "mean_minmax", "percentile", "entropy", "distribution"]
CALIBRATE_ALIASES = {"kl_divergence": "entropy", "kl": "entropy", "max": "minmax"}  # the seeds' names


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizeConfig(_Cfg):
    calibrate_mode: CalibrateMode = "percentile"
    percentile: float = Field(99.999, gt=90.0, le=100.0)
    per_channel: bool = True
    symmetric_activations: bool = False
    # int8 graph form: auto = measure the candidates on this CPU and keep the fastest that passes the guard
    format: Literal["auto", "qdq", "qoperator"] = "auto"
    reduce_range: Optional[bool] = None  # None: decided by format search (7-bit weights help CPUs without VNNI)
    # Q/DQ on quantized ops' outputs too (ONNX Runtime's QLinearConv needs them) or on their inputs only (lets
    # OpenVINO fuse a float activation into the conv). None: true, except that openvino builds measure both
    quantize_outputs: Optional[bool] = None
    exclude: list[str] = Field(default_factory=list)  # node names kept in float, besides the guard's
    # Which ops get int8. Conv/Gemm/MatMul carry the compute; quantizing SiLU's Sigmoid/Mul, SE gates or
    # pools adds error and buys little on CPU. [] = ONNX Runtime's full default list.
    op_types: list[str] = Field(default_factory=lambda: ["Conv", "Gemm", "MatMul"])

    @model_validator(mode="after")
    def _placement(self):
        if self.format == "qoperator" and self.quantize_outputs is False:
            raise ValueError("quantize_outputs false needs format qdq or auto: the QOperator form (QLinearConv) "
                             "always quantizes outputs")
        return self

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data):
        if isinstance(data, dict) and data.get("calibrate_mode") in CALIBRATE_ALIASES:
            data = {**data, "calibrate_mode": CALIBRATE_ALIASES[data["calibrate_mode"]]}
        return data


class CalibrationConfig(_Cfg):
    path: Path
    suffix: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    count: int = Field(200, ge=2)
    seed: int = 0
    holdout: float = Field(0.2, gt=0.0, lt=1.0)  # share of `count` kept out of calibration, for the guard


class GuardConfig(_Cfg):
    enabled: bool = True
    min_agreement: float = Field(0.99, ge=0.0, le=1.0)  # top-1 agreement with fp32 on the held-out images
    max_top1_drop: float = Field(0.5, ge=0.0)  # points, where the held-out images have labels
    max_excluded: int = Field(64, ge=0)


class BuildConfig(_Cfg):
    model: str
    weights: Optional[str] = None  # checkpoint path, 'default', or none (random init)
    input_size: Optional[int] = Field(None, ge=32)
    engine: Literal["onnxruntime", "openvino", "torch-cuda"] = "onnxruntime"
    # fp16 for onnxruntime is an fp16 ONNX graph (for GPUs); fp16/bf16 for openvino keep the fp32 graph and
    # have OpenVINO compute in that precision (fast on CPUs with AVX512-FP16 / AMX)
    dtype: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    keep_io_types: bool = True  # fp16 ONNX: keep float32 inputs/outputs
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    calibration: Optional[CalibrationConfig] = None
    guard: GuardConfig = Field(default_factory=GuardConfig)
    opset: int = 17
    workspace: Path = Path("artifacts")
    name: Optional[str] = None  # artifact folder name inside workspace

    @model_validator(mode="after")
    def _needs_calibration(self):
        if self.dtype == "int8" and self.calibration is None:
            raise ValueError("dtype int8 needs a calibration set (calibration.path)")
        if self.dtype == "bf16" and self.engine == "onnxruntime":
            raise ValueError("dtype bf16 needs engine openvino (CPU) or torch-cuda: ONNX Runtime's CPU "
                             "provider has no bf16 kernels")
        return self

    def artifact_name(self, size: int) -> str:
        if self.name:
            return self.name
        tag = f"int8-{self.quantize.calibrate_mode}" if self.dtype == "int8" else self.dtype
        return f"{self.model}-{size}-{tag}"


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent = BuildConfig
        for part in e["loc"][:-1]:
            parent = parent.model_fields[part].annotation if hasattr(parent, "model_fields") else parent
            parent = getattr(parent, "__args__", [parent])[0] if not hasattr(parent, "model_fields") else parent
        known = list(getattr(parent, "model_fields", {}))
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
        msg = f"unknown key '{loc}'{hint}"
    else:
        text = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        msg = f"{loc}: {text}" if loc else text
    more = f" (+{len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{source}: {msg}{more}"


def parse_config(data: dict, source: str = "config") -> BuildConfig:
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        raise CvzooError(_one_line(e, source)) from None


def load_config(path: Path) -> BuildConfig:
    path = Path(path)
    if not path.is_file():
        raise CvzooError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CvzooError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CvzooError(f"{path}: expected a mapping of settings at the top level")
    return parse_config(data, str(path))  # relative paths are relative to the working directory
