"""Which convs lose accuracy with full-range s8 weights on an engine's int8 kernels without VNNI?

The 7-bit and the s8 Q/DQ graphs of a model (inputs-only placement, the same robust ranges) are written once; then,
for each conv, the 7-bit graph with that one conv's weights taken from the s8 graph is run on the build's held-out
photos and compared with fp32 (KL, expected top-1 drop). A conv whose s8 weights raise the KL is one whose 16-bit
pair sums saturate. Run it under an ISA cap to measure an AVX2 CPU's kernels on a VNNI machine:

    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/int8_weight_saturation.py --model dla34-imagenette --size 224 \\
        --engine openvino --out benchmarks/results/int8_weight_saturation_dla34_avx2cap.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process

from cvzoo.artifact import Artifact
from cvzoo.buildconfig import parse_config
from cvzoo.calibration import ArrayReader, load_arrays, select_split
from cvzoo.card import get_card
from cvzoo.checkpoint import resolve_default_weights
from cvzoo.export import cached_export
from cvzoo.machine import machine_info
from cvzoo.postprocess import write_text_atomic
from cvzoo.quantize.forms import Int8Form, calibrated_ops, quantize
from cvzoo.quantize.graph import classifier
from cvzoo.quantize.guard import measure_fidelity
from cvzoo.quantize.stats import image_ranges, write_ort_cache
from cvzoo.runners import compiled_runner, in_batches, run_logits
from shared_data import SHARED

OPS = ["Conv", "Gemm", "MatMul"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dla34-imagenette")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", default=str(SHARED / "imagenet-sample"))
    ap.add_argument("--engine", default="openvino")
    ap.add_argument("--out", default="benchmarks/results/int8_weight_saturation.json")
    args = ap.parse_args()
    card = get_card(args.model)
    fp32 = cached_export(card, resolve_default_weights(card), args.size).folder
    pre = Artifact.load(fp32).preprocessing
    cfg = parse_config({"model": card.name, "dtype": "int8", "input_size": args.size,
                        "calibration": {"path": args.calib}})
    calib_files, held_files = select_split(cfg.calibration)  # the build's own split
    calib, held = load_arrays(calib_files, pre)[0], load_arrays(held_files, pre)[0]
    ref = run_logits(fp32 / "model.onnx", held)

    def fidelity(path: Path) -> dict:
        run, layers = compiled_runner(path, args.engine)
        f = measure_fidelity(ref, in_batches(run, held))
        return {"kl": f.kl, "expected_drop": f.expected_drop, "agreement": f.agreement, "int8_layers": list(layers)}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepped = work / "prepped.onnx"
        quant_pre_process(str(fp32 / "model.onnx"), str(prepped), skip_symbolic_shape=True)
        s = image_ranges(prepped, calib, calibrated_ops(OPS))
        cache = work / "ranges.json"
        write_ort_cache(cache, s.tensors, *s.ranges("robust"))
        head = classifier(onnx.load(str(prepped)))
        graphs = {}
        for weights in ("s7", "s8"):
            graphs[weights] = work / f"{weights}.onnx"
            quantize(prepped, graphs[weights], Int8Form("qdq", weights, False), [head], OPS, True, False, cache,
                     ArrayReader(calib, "input"), "robust")
        whole = {w: fidelity(p) for w, p in graphs.items()}
        print(json.dumps(whole), flush=True)
        s8 = {i.name: i for i in onnx.load(str(graphs["s8"])).graph.initializer}
        rows = []
        for name in [n for n, i in s8.items() if n.endswith("_quantized") and len(i.dims) == 4]:
            stem = name[: -len("_quantized")]
            hybrid = onnx.load(str(graphs["s7"]))
            for init in hybrid.graph.initializer:  # ONNX Runtime's QDQ writer: X_quantized, X_scale, X_zero_point
                if init.name in (f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"):
                    init.CopyFrom(s8[init.name])
            path = work / "hybrid.onnx"
            onnx.save(hybrid, str(path))
            rows.append({"weight": stem, **fidelity(path)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"model": card.name, "size": args.size, "engine": args.engine, "held_out": len(held),
              "calibration": len(calib), "machine": machine_info(), "all_s7": whole["s7"], "all_s8": whole["s8"],
              "one_conv_s8": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
