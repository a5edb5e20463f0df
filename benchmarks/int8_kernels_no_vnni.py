"""What ONNX Runtime's int8 kernels compute on a CPU without VNNI, measured on any x86 machine: the same int8
forms of one model run natively and under QEMU's user-mode emulation of a Haswell (AVX2, no AVX-512, no VNNI;
Debian's qemu-user), against fp32. Writes JSON.

    python benchmarks/int8_kernels_no_vnni.py --model efficientnetv2_rw_t-imagenette --images 64 \
        --out benchmarks/results/int8_kernels_no_vnni.json

Without VNNI, ORT's u8 x s8 convolution adds pairs of products in 16 bits (vpmaddubsw), which saturate with
full-range s8 weights; 7-bit weights (s7, ORT's reduce_range) and u8 weights (a u8 x u8 kernel) cannot. Emulation
is slow (about 1 s per image for efficientnetv2_rw_t at 112 px) but exact: it runs the AVX2 code paths, so the
numbers are the AVX2 machine's. Only accuracy is measured here, not speed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cvzoo.buildconfig import parse_config
from cvzoo.calibration import load_arrays, select_split
from cvzoo.card import get_card
from cvzoo.checkpoint import resolve_default_weights
from cvzoo.export import cached_export
from cvzoo.machine import machine_info
from cvzoo.postprocess import write_text_atomic
from cvzoo.quantize.forms import Int8Form, quantize
from cvzoo.quantize.graph import classifier
from cvzoo.quantize.stats import image_ranges, write_ort_cache
from shared_data import SHARED

RUN = """import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"]); x = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i + 8]})[0] for i in range(0, len(x), 8)]))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnetv2_rw_t-imagenette")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--cpu", default="Haswell", help="QEMU CPU model without VNNI")
    ap.add_argument("--out", default="benchmarks/results/int8_kernels_no_vnni.json")
    args = ap.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        sys.exit("needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    card = get_card(args.model)
    fp32 = cached_export(card, resolve_default_weights(card), card.input_size).folder / "model.onnx"
    cfg = parse_config({"model": args.model, "dtype": "int8", "calibration": {"path": str(SHARED / "imagenet-sample")}})
    calib_files, _ = select_split(cfg.calibration)
    calib = load_arrays(calib_files, card.preprocessing)[0]
    files = sorted((SHARED / "imagenette-val").glob("*/*.JPEG"))[:: max(1, 1000 // args.images)][: args.images]
    x = load_arrays(files, card.preprocessing)[0]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepped = work / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        head = classifier(onnx.load(str(prepped)))
        s = image_ranges(prepped, calib, cfg.quantize.op_types)
        cache = work / "ranges.json"
        write_ort_cache(cache, s.tensors, *s.ranges("robust"))
        np.save(work / "x.npy", x)
        (work / "run.py").write_text(RUN)

        def logits(model: Path, emulated: bool) -> np.ndarray:
            cmd = ([qemu, "-cpu", args.cpu] if emulated else []) + [sys.executable, str(work / "run.py"), str(model),
                                                                     str(work / "x.npy"), str(work / "y.npy")]
            subprocess.run(cmd, check=True, capture_output=True)
            return np.load(work / "y.npy")

        ref = logits(fp32, False)
        for weights in ("s8", "s7", "u8"):
            model = work / f"{weights}.onnx"
            quantize(prepped, model, Int8Form("qdq", weights), [head] if head else [], cfg.quantize.op_types,
                     cache=cache)
            for where, emulated in (("native", False), (f"qemu-{args.cpu}", True)):
                y = logits(model, emulated)
                rows[f"{weights}/{where}"] = {"agreement_with_fp32": float((y.argmax(1) == ref.argmax(1)).mean()),
                                              "rms_logit_error": float(np.sqrt(((y - ref) ** 2).mean()))}
                print(weights, where, rows[f"{weights}/{where}"], flush=True)
    report = {"model": args.model, "images": len(x), "machine": machine_info(), "emulated_cpu": args.cpu,
              "forms": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
