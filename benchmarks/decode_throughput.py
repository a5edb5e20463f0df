"""Host-side cost of the two input forms an engine can take: decode + preprocess rate when preprocessing
ends in normalized float32 CHW (ONNX Runtime, OpenVINO) or stops at the uint8 HWC crop (torch-cuda, which
normalizes on the GPU), and the time to copy one batch of each form (the host half of a GPU upload).
Rounds alternate between the forms; medians are reported. Needs no GPU.

    python benchmarks/decode_throughput.py --out benchmarks/results/decode_throughput.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from cvzoo.machine import machine_info
from cvzoo.card import get_card
from cvzoo.machine import physical_cores
from cvzoo.preprocess import decode_stream
from cvzoo.preprocess import find_images

FORMS = {"float32_nchw": False, "uint8_nhwc": True}  # decode_stream's `pixels`


def decode_ips(paths, pre, pixels: bool) -> float:
    t = time.perf_counter()
    n = sum(1 for d in decode_stream(paths, pre, pixels=pixels) if d.error is None)
    return n / (time.perf_counter() - t)


def copy_ms(shape, dtype, repeats: int) -> float:
    """One batch copied into a preallocated buffer (np.copyto, as the engine fills its pinned buffer)."""
    src = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/imagenet-sample,../shared/data/imagenette-val")
    ap.add_argument("--models", default="dla34,efficientnetv2_rw_t", help="whose preprocessing (input size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="batch of the copy timing")
    ap.add_argument("--out", default="benchmarks/results/decode_throughput.json")
    args = ap.parse_args()
    rows = []
    for folder in args.data.split(","):
        paths, _ = find_images([folder])
        for name in args.models.split(","):
            pre = get_card(name).preprocessing
            rates: dict[str, list[float]] = {form: [] for form in FORMS}
            for _ in range(args.rounds):
                for form, pixels in FORMS.items():
                    rates[form].append(decode_ips(paths, pre, pixels))
            size = pre.input_size
            row = {"data": folder, "images": len(paths), "model": name, "input_size": size,
                   "workers": physical_cores(),
                   **{f"decode_preprocess_ips_{form}": statistics.median(r) for form, r in rates.items()},
                   "rounds": rates,
                   f"copy_ms_batch{args.batch}_float32": copy_ms((args.batch, 3, size, size), np.float32, 20),
                   f"copy_ms_batch{args.batch}_uint8": copy_ms((args.batch, size, size, 3), np.uint8, 20)}
            row["uint8_vs_float32_decode"] = row["decode_preprocess_ips_uint8_nhwc"] / row["decode_preprocess_ips_float32_nchw"]
            print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
            rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
