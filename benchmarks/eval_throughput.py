"""Eval throughput next to the machine's decode+preprocess-only rate and the engine-only rate: eval
runs both at once (decode threads feeding the engine), so the slower of the two is its ceiling.

    python benchmarks/eval_throughput.py --out benchmarks/results/eval_throughput.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cvzoo.artifact import Artifact
from cvzoo.bench import bench
from cvzoo.build import build
from cvzoo.buildconfig import parse_config
from cvzoo.datasets import load_samples
from cvzoo.evaluate import evaluate
from cvzoo.preprocess import decode_stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dla34-imagenette,cspresnet50-imagenette")
    ap.add_argument("--data", default="../shared/data/imagenette-val")
    ap.add_argument("--out", default="benchmarks/results/eval_throughput.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as ws:
        for name in args.models.split(","):
            art = build(parse_config({"model": name, "weights": "default", "workspace": ws}), say=lambda m: None)
            a = Artifact.load(art)
            paths = [s.path for s in load_samples(Path(args.data), a.synsets)]
            t = time.perf_counter()
            n = sum(1 for _ in decode_stream(paths, a.preprocessing))
            decode_ips = n / (time.perf_counter() - t)
            s = evaluate(art, args.data, Path(ws) / f"ev-{name}", fresh=True, progress=False)
            engine_ips = bench(art, batches=(32,), duration=5.0)["results"][0]["throughput_ips"]
            bound = min(decode_ips, engine_ips)  # eval can go no faster than its slower stage
            row = {"model": name, "images": n, "decode_preprocess_only_ips": decode_ips,
                   "engine_only_b32_ips": engine_ips, "eval_ips": s["throughput"]["images_per_s"],
                   "eval_vs_decode_only": s["throughput"]["images_per_s"] / decode_ips,
                   "eval_vs_slower_stage": s["throughput"]["images_per_s"] / bound, "top1": s["top1"]}
            print(json.dumps(row))
            rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
