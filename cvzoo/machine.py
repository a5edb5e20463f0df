"""What this CPU can do: the ISA flags that decide which int8 / half-precision kernels are fast (read by build
and bench, recorded in their reports)."""
from __future__ import annotations

import os
import platform


def physical_cores() -> int:
    """CPU cores this process may use (affinity-aware); the default thread count of CPU engines."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# oneDNN's ONEDNN_MAX_CPU_ISA values that leave out its VNNI int8 kernels
NO_VNNI_ISA_CAPS = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def machine_info() -> dict:
    cpu, flags = platform.processor(), ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return {"cpu": cpu, "cores_usable": physical_cores(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": " avx_vnni" in flags,
            # what OpenVINO's fp16/bf16 builds compute with; without them it falls back to f32. f16 is fast only
            # with AMX-FP16: on AVX512-FP16 alone it ran slower than f32 (docs/benchmarks.md)
            "avx512_fp16": " avx512_fp16" in flags, "avx512_bf16": " avx512_bf16" in flags, "amx_bf16": " amx_bf16" in flags,
            "amx_fp16": " amx_fp16" in flags, "amx_int8": " amx_int8" in flags,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def has_vnni(m: dict | None = None, engine: str = "onnxruntime") -> bool:
    """An int8 dot product that sums u8 x s8 pairs in 32 bits. Without it (plain AVX2) ONNX Runtime's u8 x s8
    kernels add pairs of products in 16 bits, which saturate on full-range 8-bit weights. OpenVINO's kernels
    (oneDNN) also honour an ISA cap below VNNI, so that a build here measures what they compute on an AVX2 CPU."""
    m = m or machine_info()
    if engine == "openvino" and (m.get("onednn_max_cpu_isa") or "").upper() in NO_VNNI_ISA_CAPS:
        return False
    return bool(m["avx512_vnni"] or m["avx_vnni"] or m["amx_int8"])
