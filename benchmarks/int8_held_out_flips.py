"""Which held-out photos carry an int8 build's guard numbers: per photo, fp32's top-1 probability, the expected-drop
cost of int8's answer (p(a) - p(b) under fp32's probabilities), the KL of the softmax, and how far the photo's
activations reach beyond the median calibration photo's (the rule that names calibration outliers). Writes JSON.

    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/int8_held_out_flips.py --model dla34-imagenette --size 224 \
        --engine openvino --out benchmarks/results/int8_held_out_flips_dla34_avx2cap.json

The graph is the build's fully quantized one (`--no-guard`), calibrated on ../shared/data/imagenet-sample with the
build's defaults; the held-out photos are the build's own (the 200 its guard judges).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cvzoo.artifact import Artifact
from cvzoo.build import build
from cvzoo.buildconfig import parse_config
from cvzoo.calibration import load_arrays
from cvzoo.machine import machine_info
from cvzoo.postprocess import write_text_atomic
from cvzoo.quantize.forms import calibrated_ops
from cvzoo.quantize.guard import per_image, softmax
from cvzoo.quantize.stats import image_ranges
from cvzoo.runners import run_logits
from shared_data import SHARED



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dla34-imagenette")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--engine", default="openvino")
    ap.add_argument("--calib", default=str(SHARED / "imagenet-sample"))
    ap.add_argument("--top", type=int, default=15, help="photos listed, costliest first")
    ap.add_argument("--out", default="benchmarks/results/int8_held_out_flips.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sized = {"input_size": args.size} if args.size else {}
        fp32 = Artifact.load(build(parse_config({"model": args.model, "weights": "default", "workspace": tmp,
                                                 "name": "fp32", **sized}), say=lambda m: None))
        art = Artifact.load(build(parse_config({"model": args.model, "weights": "default", "dtype": "int8",
                                                "engine": args.engine, "workspace": tmp, "name": "noguard",
                                                "calibration": {"path": args.calib}, "guard": {"enabled": False},
                                                **sized}), say=lambda m: None))
        m = art.manifest.build
        held = [Path(p) for p in m.guard.held_out]
        xh = load_arrays(held, art.preprocessing)[0]
        xc = load_arrays([Path(f.path) for f in m.calibration.files], art.preprocessing)[0]
        ops = calibrated_ops(m.quantization.op_types)
        calib_stats = image_ranges(fp32.model_path, xc, ops)
        held_stats = image_ranges(fp32.model_path, xh, ops, outputs=True)  # fp32's logits from the same pass
        ref, got = held_stats.outputs, run_logits(art.model_path, xh, engine=args.engine)
    p, a, b = softmax(ref.astype(np.float64)), ref.argmax(1), got.argmax(1)
    cost, kl = per_image(ref, got)
    times = calib_stats.times_median(held_stats)
    beyond = {o["index"] for o in m.guard.held_out_beyond_ranges}  # what the build set apart (its prepped graph's)
    photos = [{"file": held[i].name, "fp32_top1_prob": round(float(p[i, a[i]]), 4), "flipped": bool(a[i] != b[i]),
               "cost": round(float(cost[i]), 4), "kl": round(float(kl[i]), 4),
               "max_times_median": round(float(times[i].max()), 1), "tensors_at_4x": int((times[i] >= 4).sum()),
               "beyond_ranges": i in beyond} for i in np.argsort(-cost)[: args.top]]
    out = np.array(sorted(beyond), int)
    share = {"expected_drop_all": 100 * float(cost.mean()), "kl_all": float(kl.mean()), "beyond_ranges": len(out),
             "share_of_expected_drop": float(cost[out].sum() / max(cost.sum(), 1e-12)),
             "share_of_kl": float(kl[out].sum() / max(kl.sum(), 1e-12)),
             "expected_drop_judged": 100 * float(np.delete(cost, out).mean()),
             "kl_judged": float(np.delete(kl, out).mean()), "tensors": len(held_stats.tensors)}
    report = {"model": args.model, "input_size": art.preprocessing.input_size, "engine": args.engine,
              "form": m.quantization.form, "held_out": len(held), **share, "photos": photos,
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("photos", "machine")}, indent=1))
    for ph in photos:
        print(ph)


if __name__ == "__main__":
    main()
