"""Calibration statistics: every calibration image's min and max of each tensor the quantizer reads, from one fp32
pass. Ranges are then aggregated over images, so that a few photos with extreme activations do not set them, and
handed to ONNX Runtime's quantizer as its calibration cache. The same numbers name those photos."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROBUST_QUANTILE = 0.9  # robust ranges: the 90th percentile over images of each image's max (10th of its min)
OUTLIER_RATIO = 4.0  # an image whose activations reach this many times the median image's is named


def tensors_to_calibrate(model, op_types: Sequence[str]) -> list[str]:
    """Float inputs and outputs of the nodes to quantize, weights excluded (ONNX Runtime's own selection rule) and
    other constants too."""
    from onnx import TensorProto, shape_inference
    model = shape_inference.infer_shapes(model)  # value_info for every tensor: which ones are float
    floats = {v.name for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
              if v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    # weights, and Constant nodes' outputs (e.g. a Clip's bounds): not activations
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    out: list[str] = []
    for node in model.graph.node:
        if not op_types or node.op_type in op_types:
            out += [t for t in [*node.input, *node.output] if t in floats and t not in constants and t not in out]
    return out


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def add_reduction(graph, opset: int, op: str, tensor: str, out: str, axes: list[int], keepdims: int = 0) -> None:
    """Append a Reduce{Min,Max,Mean} node (axes an attribute before opset 18, an input from 18 on)."""
    from onnx import helper, numpy_helper
    if opset >= 18:
        name = f"{out}_axes"
        graph.initializer.append(numpy_helper.from_array(np.asarray(axes, np.int64), name))
        graph.node.append(helper.make_node(op, [tensor, name], [out], keepdims=keepdims))
    else:
        graph.node.append(helper.make_node(op, [tensor], [out], axes=axes, keepdims=keepdims))


@dataclass
class ImageRanges:
    """Per calibration image and tensor: min and max, shape (images, tensors); `outputs`: the model's own first
    output per image, where the pass was asked for it."""
    tensors: list[str]
    mins: np.ndarray
    maxs: np.ndarray
    outputs: Optional[np.ndarray] = None

    def ranges(self, how: str) -> tuple[np.ndarray, np.ndarray]:
        if how == "robust":
            return np.quantile(self.mins, 1 - ROBUST_QUANTILE, axis=0), np.quantile(self.maxs, ROBUST_QUANTILE, axis=0)
        if how == "mean_minmax":
            return self.mins.mean(0), self.maxs.mean(0)
        if how == "minmax":
            return self.mins.min(0), self.maxs.max(0)
        raise ValueError(f"no per-image aggregate '{how}'")

    def outliers(self, files: Sequence[Path], ratio: float = OUTLIER_RATIO, min_share: float = 0.05) -> list[dict]:
        """Images whose largest |value| is >= `ratio` x the median image's in at least `min_share` of the tensors.
        Pooled statistics (minmax, percentile, entropy) take those tensors' ranges from them and leave every other
        image a few int8 levels there."""
        return self.beyond_median(self, files, ratio, min_share)

    def times_median(self, other: "ImageRanges") -> np.ndarray:
        """Per image of `other` (same tensors) and tensor: its largest |value| over this set's median image's."""
        absmax = np.maximum(np.abs(other.mins), np.abs(other.maxs))
        median = np.median(np.maximum(np.abs(self.mins), np.abs(self.maxs)), axis=0)
        return absmax / np.maximum(median, 1e-12)

    def beyond_median(self, other: "ImageRanges", files: Sequence[Path], ratio: float = OUTLIER_RATIO,
                      min_share: float = 0.05) -> list[dict]:
        """The images of `other` whose largest |value| is >= `ratio` x this set's median image's in at least
        `min_share` of the tensors, each with its index in `other`, most tensors first."""
        times = self.times_median(other)
        hits = (times >= ratio).sum(1)
        found = [{"file": str(files[i]), "index": i, "tensors": int(hits[i]), "of": len(self.tensors),
                  "max_times_median": round(float(times[i].max()), 1)}
                 for i in range(len(files)) if hits[i] >= max(1.0, min_share * len(self.tensors))]
        return sorted(found, key=lambda f: (-f["tensors"], -f["max_times_median"]))


def image_ranges(model_path: Path, arrays: np.ndarray, op_types: Sequence[str], batch: int = 2,
                 outputs: bool = False) -> ImageRanges:
    """One fp32 pass over the calibration images, with a per-image ReduceMin/ReduceMax on each calibrated tensor.
    outputs: the model's first output (the logits) from the same pass, instead of a second fp32 pass. Small batches:
    the reductions read every activation again, which is cheap only while it is still in the cache."""
    import onnx
    from onnx import helper

    from ..runners import ort_session
    model = onnx.load(str(model_path))
    tensors = tensors_to_calibrate(model, op_types)
    opset = _opset(model)
    del model.graph.output[1 if outputs else 0:]
    for k, t in enumerate(tensors):
        model.graph.node.append(helper.make_node("Flatten", [t], [f"cvzoo_flat_{k}"], axis=1))
        for op in ("ReduceMin", "ReduceMax"):
            out = f"cvzoo_{op}_{k}"
            add_reduction(model.graph, opset, op, f"cvzoo_flat_{k}", out, [1])
            model.graph.output.append(helper.make_empty_tensor_value_info(out))
    sess = ort_session(model)
    name = model.graph.input[0].name
    mins, maxs, own = [], [], []
    for i in range(0, len(arrays), batch):
        out = sess.run(None, {name: arrays[i:i + batch]})
        if outputs:
            own.append(out.pop(0))
        mins.append(np.stack(out[0::2], axis=1))
        maxs.append(np.stack(out[1::2], axis=1))
    return ImageRanges(tensors, np.concatenate(mins), np.concatenate(maxs), np.concatenate(own) if outputs else None)


def write_ort_cache(path: Path, tensors: Sequence[str], lo: np.ndarray, hi: np.ndarray) -> None:
    """Ranges as ONNX Runtime's calibration cache (MinMax kind): quantize_static then uses them as they are."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data
    data = {t: TensorData(lowest=np.array([min(float(a), 0.0)], np.float32),
                          highest=np.array([max(float(b), 0.0)], np.float32)) for t, a, b in zip(tensors, lo, hi)}
    path.unlink(missing_ok=True)
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def outlier_note(outliers: list[dict], mode: str) -> str:
    names = ", ".join(f"{Path(o['file']).name} ({o['tensors']} of {o['of']} tensors, "
                      f"up to {o['max_times_median']:.0f}x)" for o in outliers[:3])
    pooled = mode in ("minmax", "percentile", "entropy", "distribution")
    advice = (f"; {mode} pools every image's values, so those tensors' ranges come from them: --calibrate-mode "
              "robust (each image's range, the top 10% of images ignored) or leaving them out helps" if pooled else
              f"; {mode} ranges aggregate each image's range, so they weigh as one image each")
    return (f"calibration: {len(outliers)} image(s) with activations >= {OUTLIER_RATIO:g}x the median image's: "
            f"{names}{advice}")
