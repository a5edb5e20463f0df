"""int8 graph forms and the one call that writes them (ONNX Runtime's static quantizer, fed our ranges)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

# ranges cvzoo computes from each image's min/max (stats.py); the others are ONNX Runtime's calibrators, which pool
# every image's values into one histogram or min/max
PER_IMAGE_MODES = ("robust", "mean_minmax", "minmax")
# activations whose range a conv's output Q takes when it is their only reader (ONNX Runtime's quantizer then drops
# them: the Q saturates where they clip). tf_efficientnet_lite0 with ReLU6: 90.4 top-1 instead of 84.6 (fp32 91.0),
# and 2.6 instead of 5.1 ms at b1 (docs/quantization.md)
FUSED_ACTIVATIONS = ("Relu", "Clip")


def calibrated_ops(op_types: Sequence[str]) -> list[str]:
    """The op types whose tensors get ranges: the quantized ones and the activations a Q may take over."""
    return list(op_types) + [a for a in FUSED_ACTIVATIONS if op_types and a not in op_types]


@dataclass(frozen=True)
class Int8Form:
    """One way to write an int8 graph; which is fastest, and which is exact enough, depends on the CPU and engine.
    weights: s8 = symmetric int8; s7 = int8 limited to 7 bits (ONNX Runtime's reduce_range); u8 = asymmetric
    uint8. Without VNNI, ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits, which saturate with
    full-range s8 weights; s7 and u8 (a u8 x u8 kernel) do not."""
    format: str = "qdq"  # qdq | qoperator
    weights: str = "s8"
    # Q/DQ on the outputs of quantized ops too (ONNX Runtime fuses Conv+Q into QLinearConv), or on their inputs
    # only (as NNCF places them: OpenVINO then fuses a float activation after a conv, e.g. SiLU)
    outputs: bool = True
    # with outputs: a conv's Q takes the range of the Relu/Clip after it, which the quantizer then removes. The steps
    # that rebuild the float network from a QDQ graph (bias correction, node ranking) read one without this.
    fuse_activations: bool = True

    @property
    def label(self) -> str:
        return f"{self.format}-{self.weights}{'' if self.outputs else '-inputs_only'}"


def quantize(src: Path, dst: Path, form: Int8Form, exclude: Sequence[str], op_types: Sequence[str],
             per_channel: bool = True, symmetric_activations: bool = False, cache: Optional[Path] = None,
             reader=None, calibrate_mode: str = "minmax", percentile: float = 99.999,
             seven_bit: Sequence[str] = ()) -> None:
    """`cache` holds ranges (ONNX Runtime's calibration cache: ours for the per-image modes; written by its own
    calibrator from `reader` on first use for percentile / entropy / distribution). `seven_bit`: weight tensors
    kept in 7 bits in an s8 form."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    method = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
              "distribution": CalibrationMethod.Distribution}.get(calibrate_mode, CalibrationMethod.MinMax)
    if reader is not None:
        reader.rewind()
    ops = list(op_types) or ["Conv", "Gemm", "MatMul"]  # [] = ORT's full default list; outputs-off needs names
    # with Q/DQ on outputs, a conv's Q takes its activation's range; inputs-only leaves conv + activation float
    quantized = calibrated_ops(op_types) if form.outputs and form.fuse_activations else list(op_types)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer logs every node at INFO on the root logger
    try:
        quantize_static(
            str(src), str(dst), reader,
            quant_format=QuantFormat.QDQ if form.format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel, reduce_range=form.weights == "s7",
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if form.weights == "u8" else QuantType.QInt8,
            calibrate_method=method, nodes_to_exclude=list(exclude),
            op_types_to_quantize=quantized or None,
            extra_options={"CalibPercentile": percentile, "ActivationSymmetric": symmetric_activations,
                           # conv weights: per output channel (axis 0)
                           "TensorQuantOverrides": {w: [{"reduce_range": True, **({"axis": 0} if per_channel else {})}]
                                                    for w in seven_bit if form.weights == "s8"},
                           "WeightSymmetric": form.weights != "u8",
                           "OpTypesToExcludeOutputQuantization": [] if form.outputs else ops},
            calibration_cache_path=str(cache) if cache else None,
        )
    finally:
        root.setLevel(level)


def candidates(engine: str, fmt: str, weights: Sequence[str], outputs: Optional[bool]) -> list[Int8Form]:
    """The forms a build times on `engine`: `fmt` and `outputs` pinned, or 'auto' / None for both ways."""
    family = list(weights)
    if engine == "openvino":  # OpenVINO reads QDQ only; where the Q/DQ sit matters
        # inputs-only first: the form the recovery steps improve, since it is the one OpenVINO runs fastest (it
        # fuses the activation after a conv; every unguarded OpenVINO build in docs/quantization.md picked it)
        return [Int8Form("qdq", w, o) for w in family for o in (False, True) if outputs in (None, o)]
    formats = ["qdq", "qoperator"] if fmt == "auto" and outputs is not False else [fmt if fmt != "auto" else "qdq"]
    return [Int8Form(f, w, outputs is not False) for f in formats for w in family]
