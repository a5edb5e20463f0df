"""Where the time goes inside the torch-cuda engine's compiled graph: a torch.profiler trace of a few
batches, kernel time grouped by kind (cuDNN convs, GEMMs, inductor's Triton pointwise / reduction
kernels, copies), the top kernels, and how much of the wall time the GPU spent in kernels at all.
Issue 7's open question: why dla34 and ese_vovnet19b_dw stay at 1.11-1.15x plain torch.compile at batch 256.

    python benchmarks/gpu_profile.py --models dla34,ese_vovnet19b_dw --batch 256 \
        --out benchmarks/results/gpu_profile_h100.json

Same model setup as benchmarks/gpu_torch_cuda.py (random init with data-like BN statistics, fp16,
channels-last, seeded input on the device), compiled the engine's way (inductor freezing, default mode)
and, for comparison, as plain torch.compile with autocast. `--device cpu` runs the same analysis on the
CPU in float32 (a smoke run of this script where no GPU exists; CPU times say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import time
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from cvzoo.machine import machine_info
from cvzoo.card import get_card
from cvzoo.models import build_model, set_bn_statistics

# kernel name -> kind; first match wins (cuDNN's and CUTLASS's conv kernels carry "conv"/"xmma"/"fprop")
KINDS = [("triton_reduction", r"^triton_(red|per)_"), ("triton_pointwise", r"^triton_(poi|tem)_"),
         ("conv", r"conv|xmma|fprop|cudnn|implicit|winograd|dgrad"), ("gemm", r"gemm|cutlass|cublas|sm\d+_.*mma"),
         ("copy", r"memcpy|memset|copy|elementwise_kernel|CatArrayBatched"), ("cpp_fused", r"^cpp_fused|graph_\d+_cpp")]


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def kernel_profile(fn, x, batches: int, on_gpu: bool) -> dict:
    """Run fn(x) `batches` times under the profiler; kernel (GPU) or op (CPU) self time per batch."""
    activity = ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with profile(activities=[activity]) as prof:
        for _ in range(batches):
            fn(x)
        sync()
    wall_ms = (time.perf_counter() - t0) * 1000.0 / batches
    by_name: dict[str, list] = defaultdict(lambda: [0, 0.0])  # name -> [calls, us]
    for e in prof.key_averages():
        if on_gpu and e.device_type != DeviceType.CUDA:
            continue
        us = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if us > 0:
            by_name[e.key][0] += e.count
            by_name[e.key][1] += us
    total_us = sum(us for _, us in by_name.values())
    kinds: dict[str, float] = defaultdict(float)
    for name, (_, us) in by_name.items():
        kinds[kind_of(name)] += us
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:30]
    return {"wall_ms_per_batch": wall_ms, "kernel_ms_per_batch": total_us / 1000.0 / batches,
            "kernels_per_batch": sum(c for c, _ in by_name.values()) / batches,
            "busy_fraction": total_us / 1000.0 / batches / wall_ms if on_gpu else None,
            "by_kind_ms_per_batch": {k: us / 1000.0 / batches for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n[:160], "kind": kind_of(n), "calls_per_batch": c / batches,
                             "ms_per_batch": us / 1000.0 / batches} for n, (c, us) in top]}


def profile_model(name: str, batch: int, batches: int, device: str) -> dict:
    torch._dynamo.reset()
    on_gpu = device == "cuda"
    card = get_card(name)
    size = card.input_size
    gen = torch.Generator().manual_seed(0)
    model = set_bn_statistics(build_model(card), torch.randn(16, 3, size, size, generator=gen))
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    dtype = torch.float16 if on_gpu else torch.float32
    x = torch.randn(batch, 3, size, size, generator=gen).to(device).to(memory_format=torch.channels_last)
    ours = torch.compile(copy.deepcopy(model).to(dtype))
    plain = torch.compile(model)

    def engine_way(inp):
        with torch.inference_mode():
            return ours(inp.to(dtype))

    def plain_way(inp):
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=on_gpu):
            return plain(inp)

    row = {"model": name, "input_size": size, "batch": batch, "device": device}
    for tag, fn, settings in (("torch_compile", plain_way, {}), ("cvzoo_frozen", engine_way, {"freezing": True})):
        with torch._inductor.config.patch(settings):
            for _ in range(3):  # compile + warm-up, outside the trace
                fn(x)
            row[tag] = kernel_profile(fn, x, batches, on_gpu)
        r = row[tag]
        print(f"{name:20s} {tag:14s} wall {r['wall_ms_per_batch']:8.2f} ms  kernels {r['kernel_ms_per_batch']:8.2f} ms "
              f"({r['kernels_per_batch']:.0f}/batch)  " +
              "  ".join(f"{k} {ms:.2f}" for k, ms in r["by_kind_ms_per_batch"].items()), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dla34,ese_vovnet19b_dw")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=10, help="batches traced per variant")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default="benchmarks/results/gpu_profile.json")
    args = ap.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_profile: --device cuda needs a CUDA GPU and none is visible here "
                             "(--device cpu runs the smoke version)")
        torch.backends.cudnn.benchmark = True
    report = {"machine": machine_info(), "torch": torch.__version__, "batch": args.batch, "rows": [],
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    for name in args.models.split(","):
        report["rows"].append(profile_model(name, args.batch, args.batches, args.device))
        with open(args.out, "w") as f:  # after every model: a cut-off run still leaves its numbers
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
