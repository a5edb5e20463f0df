"""`cvzoo build` configuration: YAML (the seeds' vamc config, our fields), validated with one-line errors."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .card import MIN_INPUT_SIZE
from .errors import CvzooError
from .preprocess import IMAGE_SUFFIXES

# robust: each image's min/max, the 90th percentile over images (a few outlier photos do not set a range);
# mean_minmax: each image's min/max averaged (NNCF's default for per-tensor activations); the others pool every
# image's values (ONNX Runtime's calibrators), so one image with extreme activations sets a small tensor's range
CalibrateMode = Literal["robust", "mean_minmax", "minmax", "percentile", "entropy", "distribution"]
RecoveryStep = Literal["weights_s8", "weights_s8_after_stem", "ranges", "placement", "equalization",
                       "bias_correction", "weights_u8"]
CALIBRATE_ALIASES = {"kl_divergence": "entropy", "kl": "entropy", "max": "minmax"}  # the seeds' names


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizeConfig(_Cfg):
    calibrate_mode: CalibrateMode = "robust"
    percentile: float = Field(99.999, gt=90.0, le=100.0)
    per_channel: bool = True
    symmetric_activations: bool = False
    # int8 graph form: auto = measure the candidates on this CPU and keep the fastest that passes the guard
    format: Literal["auto", "qdq", "qoperator"] = "auto"
    # s8 symmetric int8, s7 the same in 7 bits (ONNX Runtime's reduce_range: no saturating sums without VNNI),
    # u8 asymmetric (a u8 x u8 kernel, slower). auto: s8 and s7 timed, u8 as a recovery step
    weights: Literal["auto", "s8", "s7", "u8"] = "auto"
    # the CPU the artifact will run on, where it is not this one: no_vnni (AVX2 without VNNI) never ships full-range
    # s8 weights, which may saturate there in a way this CPU's kernels cannot show. auto: this CPU
    target_cpu: Literal["auto", "no_vnni"] = "auto"
    # Q/DQ on quantized ops' outputs too (ONNX Runtime's QLinearConv needs them) or on their inputs only (lets
    # OpenVINO fuse a float activation into the conv). None: true, except that openvino builds measure both
    quantize_outputs: Optional[bool] = None
    exclude: list[str] = Field(default_factory=list)  # node names kept in float, besides the guard's
    # Which ops get int8. Conv/Gemm/MatMul carry the compute; quantizing SiLU's Sigmoid/Mul, SE gates or
    # pools adds error and buys little on CPU. [] = ONNX Runtime's full default list.
    op_types: list[str] = Field(default_factory=lambda: ["Conv", "Gemm", "MatMul"])
    # tried in this order while the guard's target is missed, each kept only if it helps on the held-out images;
    # after them, the fewest most sensitive nodes are kept in float
    recovery: list[RecoveryStep] = Field(default_factory=lambda: ["weights_s8", "weights_s8_after_stem", "ranges",
                                                                  "placement", "equalization", "bias_correction",
                                                                  "weights_u8"])

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
        if isinstance(data, dict) and "reduce_range" in data:  # earlier configs: reduce_range true = 7-bit weights
            rr = data["reduce_range"]
            data = {k: v for k, v in data.items() if k != "reduce_range"}
            if rr is not None:
                data.setdefault("weights", "s7" if rr else "s8")
        return data


class CalibrationConfig(_Cfg):
    path: Path
    suffix: list[str] = Field(default_factory=lambda: list(IMAGE_SUFFIXES))  # what predict and eval read
    # calibration images (NNCF's default subset size); None: 300, fewer where the folder is small
    count: Optional[int] = Field(None, ge=2)
    seed: int = 0
    # images held out for the guard: a number (>= 1) or a share of the folder (< 1); None: 200 or 20% of the
    # folder, whichever is larger, capped by what the folder has beside the calibration images
    holdout: Optional[float] = Field(None, gt=0.0)


class GuardConfig(_Cfg):
    enabled: bool = True
    # points of top-1 on the held-out images, expected from fp32's own probabilities (and, where the images have
    # labels, the measured drop not significantly above it: quantize/guard.py); never finer than one image
    max_top1_drop: float = Field(1.0, ge=0.0)
    min_agreement: Optional[float] = Field(None, ge=0.0, le=1.0)  # also require this top-1 agreement with fp32
    max_excluded: int = Field(64, ge=0)
    # a build that misses the target writes its artifact anyway, marked degraded (predict/eval/bench warn)
    accept_degraded: bool = False


class BuildConfig(_Cfg):
    model: str
    weights: Optional[str] = None  # checkpoint path, 'default', or none (random init)
    fp32: Optional[Path] = None  # an fp32 artifact of `cvzoo export` to start from instead of exporting
    input_size: Optional[int] = Field(None, ge=MIN_INPUT_SIZE)
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
    def _one_source(self):
        if self.fp32 is not None and self.weights is not None:
            raise ValueError("fp32 (an exported artifact) and weights exclude each other: the artifact has its weights")
        return self

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
    """Every problem of the config, in one line: a user fixes them all in one go."""
    return f"{source}: " + "; ".join(_problem(e) for e in err.errors())


def _problem(e: dict) -> str:
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent = BuildConfig
        for part in e["loc"][:-1]:
            parent = parent.model_fields[part].annotation if hasattr(parent, "model_fields") else parent
            parent = getattr(parent, "__args__", [parent])[0] if not hasattr(parent, "model_fields") else parent
        known = list(getattr(parent, "model_fields", {}))
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
        return f"unknown key '{loc}'{hint}"
    text = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
    return f"{loc}: {text}" if loc else text


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
    except UnicodeDecodeError as e:
        raise CvzooError(f"{path}: not valid YAML (not UTF-8 text: byte {e.start})") from None
    if not isinstance(data, dict):
        raise CvzooError(f"{path}: expected a mapping of settings at the top level")
    return parse_config(data, str(path))  # relative paths are relative to the working directory
