"""What a conv's output Q gains from taking its activation's range (Relu / Clip, which the quantizer then drops),
against the Q before the activation: the same fp32 graph, robust ranges from the same 300 ImageNet photos, s8
weights, Q/DQ on conv outputs, the classifier in float; evaluated with ONNX Runtime on labelled photos the
calibration did not use. Writes JSON.

    python benchmarks/int8_activation_ranges.py --out benchmarks/results/int8_activation_ranges.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from cvzoo.calibration import load_arrays
from cvzoo.card import get_card
from cvzoo.checkpoint import resolve_default_weights
from cvzoo.datasets import load_samples
from cvzoo.export import cached_export
from cvzoo.machine import machine_info
from cvzoo.postprocess import write_text_atomic
from cvzoo.quantize.forms import Int8Form, calibrated_ops, quantize
from cvzoo.quantize.graph import classifier
from cvzoo.quantize.stats import image_ranges, write_ort_cache
from cvzoo.runners import compiled_runner, in_batches, model_runner, time_runners
from shared_data import SHARED

OPS = ["Conv", "Gemm", "MatMul"]
# model -> the labelled folder it is evaluated on (calibration: ImageNet photos, the build's generic default)
MODELS = {"tf_efficientnet_lite0": "imagenet-sample", "dla34-imagenette": "imagenette-val",
          "ese_vovnet19b_dw-imagenette": "imagenette-val", "cspresnet50-imagenette": "imagenette-val"}


def one(name: str, eval_folder: str, tmp: Path, count: int = 300) -> dict:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    card = get_card(name)
    fp32 = cached_export(card, resolve_default_weights(card), card.input_size).folder / "model.onnx"
    prepped = tmp / f"{name}-prepped.onnx"
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    photos = sorted((SHARED / "imagenet-sample").glob("*.JPEG"))
    calib_files = [photos[i] for i in np.random.default_rng(0).permutation(len(photos))[:count]]
    calib = load_arrays(calib_files, card.preprocessing)[0]
    ranges = image_ranges(prepped, calib, calibrated_ops(OPS))
    cache = tmp / f"{name}-ranges.json"
    write_ort_cache(cache, ranges.tensors, *ranges.ranges("robust"))
    head = classifier(onnx.load(str(prepped)))
    used = set(calib_files)
    samples = [s for s in load_samples(SHARED / eval_folder, card.synsets) if s.path not in used]
    x, y = load_arrays([s.path for s in samples], card.preprocessing)[0], np.array([s.label for s in samples])
    ref = in_batches(model_runner(fp32), x)
    row = {"model": name, "eval": eval_folder, "eval_images": len(y), "fp32_top1": round(100 * float((ref.argmax(1) == y).mean()), 2)}
    paths = {}
    for tag, fused in (("activation_range", True), ("pre_activation", False)):
        paths[tag] = tmp / f"{name}-{tag}.onnx"
        quantize(prepped, paths[tag], Int8Form("qdq", "s8", True, fused), [head] if head else [], OPS, cache=cache)
        run, layers = compiled_runner(paths[tag])
        out = in_batches(run, x)
        row[tag] = {"top1": round(100 * float((out.argmax(1) == y).mean()), 2),
                    "agreement": round(float((out.argmax(1) == ref.argmax(1)).mean()), 4), "int8_layers": list(layers)}
    t = time_runners({"fp32": model_runner(fp32), **{k: model_runner(p) for k, p in paths.items()}},
                     (1, *x.shape[1:]), rounds=9)
    row["ms_b1"] = {k: round(1000 * v, 3) for k, v in t.items()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="benchmarks/results/int8_activation_ranges.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(m, MODELS[m], Path(tmp)) for m in args.models.split(",") if m]
    write_text_atomic(Path(args.out), json.dumps({"machine": machine_info(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
