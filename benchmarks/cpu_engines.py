"""CPU engine table: ONNX Runtime fp32/int8 and OpenVINO fp32/int8/fp16/bf16 vs PyTorch eager fp32, per seed
model at its card size, batch 1 and 8; plus the int8 forms the build measured. Writes JSON (and prints Markdown).
OpenVINO fp16/bf16 compute in that precision only where the CPU has it (AVX512-FP16, AMX / AVX512-BF16); the
JSON's `*_computes` fields say what ran.

    python benchmarks/cpu_engines.py --out benchmarks/results/cpu_engines.json [--seconds 3]

Random-init weights (speed does not depend on them); int8 calibrated on 40 images of --calib
(guard off: this table is about speed; accuracy is in docs/quantization.md). The best single-instance
configuration is measured again as one 1-thread instance per core (throughput mode, like benchmark_app's
THROUGHPUT hint); both ratios are reported. `gmacs` (conv/linear multiply-accumulates per image, torch's
FlopCounterMode) turns images/s into achieved GMAC/s, the number to hold against the CPU's peak. Run on an idle
machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cvzoo.bench import bench, torch_eager_ips
from cvzoo.machine import machine_info
from cvzoo.artifact import Artifact
from cvzoo.build import build
from cvzoo.buildconfig import parse_config
from cvzoo.engines import installed_cpu_engines
from cvzoo.machine import physical_cores
from cvzoo.profile import profile_model

SEED_MODELS = ["dla34", "ese_vovnet19b_dw", "cspresnet50", "efficientnetv2_rw_t"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(SEED_MODELS))
    ap.add_argument("--calib", default="../shared/data/imagenet-sample")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default="benchmarks/results/cpu_engines.json")
    args = ap.parse_args()
    engines = installed_cpu_engines()
    rows, forms = [], {}
    with tempfile.TemporaryDirectory() as ws:
        for name in args.models.split(","):
            fp32 = build(parse_config({"model": name, "workspace": ws}), say=lambda m: None)
            int8 = build(parse_config({"model": name, "dtype": "int8", "workspace": ws, "guard": {"enabled": False},
                                       "quantize": {"format": "auto"},
                                       "calibration": {"path": args.calib, "count": 40}}), say=print)
            q = Artifact.load(int8).manifest.build.quantization
            forms[name] = {**q.form_timings_b1_s, "chosen": q.form}
            # OpenVINO reads QDQ (not ORT's QOperator form): its own int8 artifact, same calibration
            int8_qdq = build(parse_config({"model": name, "dtype": "int8", "workspace": ws, "engine": "openvino",
                                           "name": f"{name}-qdq", "guard": {"enabled": False},
                                           "calibration": {"path": args.calib, "count": 40}}), say=lambda m: None)
            half = {tag: build(parse_config({"model": name, "dtype": tag, "workspace": ws, "engine": "openvino",
                                             "name": f"{name}-ov-{tag}"}), say=lambda m: None)
                    for tag in ("fp16", "bf16")} if "openvino" in engines else {}
            best_art, gmacs = {}, profile_model(name).gmacs
            for b in (1, 8):
                t = torch_eager_ips(Artifact.load(fp32), b, physical_cores(), 1.0, args.seconds)
                row = {"model": name, "input_size": Artifact.load(fp32).preprocessing.input_size, "batch": b,
                       "gmacs": gmacs, "torch_eager_fp32_ips": t["throughput_ips"]}
                for engine in engines:
                    arts = {"fp32": fp32, "int8": int8 if engine == "onnxruntime" else int8_qdq}
                    if engine == "openvino":
                        arts.update(half)
                    for tag, art in arts.items():
                        best_art[(engine, tag)] = art
                        r = bench(art, engine=engine, batches=(b,), duration=args.seconds, warmup=1.0)["results"][0]
                        row[f"{engine}_{tag}_ips"] = r["throughput_ips"]
                        row[f"{engine}_{tag}_p50_ms"] = r["latency"]["p50_ms"]
                        if r.get("inference_precision"):
                            row[f"{engine}_{tag}_computes"] = r["inference_precision"]
                best = max((k for k in row if k.endswith("_ips") and not k.startswith("torch")), key=row.get)
                row["best"] = best.removesuffix("_ips")
                row["best_vs_torch_eager"] = row[best] / row["torch_eager_fp32_ips"]
                engine, tag = best.removesuffix("_ips").split("_", 1)
                cores = physical_cores()
                r = bench(best_art[(engine, tag)], engine=engine, batches=(b,), instances=cores, threads=1,
                          duration=args.seconds, warmup=1.0)["results"][0]
                row["best_instances"], row["best_instances_ips"] = cores, r["throughput_ips"]
                row["best_instances_vs_torch_eager"] = r["throughput_ips"] / row["torch_eager_fp32_ips"]
                for key in ("torch_eager_fp32", "best_instances"):
                    row[f"{key}_gmac_per_s"] = row[f"{key}_ips"] * gmacs
                row["best_gmac_per_s"] = row[best] * gmacs
                print(json.dumps(row))
                rows.append(row)
    report = {"machine": machine_info(), "seconds_per_point": args.seconds, "rows": rows, "int8_form_timings_b1_s": forms}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    tags = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "int8", "fp16", "bf16")}
    cols = ["model", "input_size", "batch", "torch_eager_fp32_ips"] + [f"{e}_{t}_ips" for e in engines for t in tags[e]] \
        + ["best", "best_vs_torch_eager", "best_instances_ips", "best_instances_vs_torch_eager",
           "torch_eager_fp32_gmac_per_s", "best_gmac_per_s"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
