"""`cvzoo bench`: throughput and latency percentiles (vamp -i/-p/-b, benchmark_app, trtexec).

Instances are engine copies run concurrently by threads of one process (ONNX Runtime and OpenVINO release
the GIL while they run); processes multiply that. Input is seeded random data in the form the pipeline
hands that engine (normalized float32 NCHW, or uint8 NHWC pixels for an engine that normalizes them
itself), unless --images is given, which adds decode + preprocessing and is reported separately (the
end-to-end number users see).
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .artifact import Artifact, versions
from .engines import accepts_uint8, check_engine_options, engine_for, load_engine
from .errors import CvzooError
from .machine import machine_info, physical_cores


@dataclass
class Counter:
    """One engine instance's record: how many runs, and each run's latency."""
    instance: int
    process: int
    latencies: list[float] = field(default_factory=list)
    inference_precision: Optional[str] = None  # what the engine computes in (OpenVINO may fall back to f32)
    tuning: Optional[dict] = None  # recipes an engine timed and chose while running (torch-cuda, large batches)
    input: str = ""  # what the synthetic batch was
    # perf_counter at the start and end of the measured runs; a system-wide clock (Linux, macOS, Windows), so
    # windows of different processes compare
    started: float = 0.0
    ended: float = 0.0


def latency_stats(lat: Sequence[float]) -> dict:
    a = np.asarray(lat) * 1000.0
    return {"mean_ms": float(a.mean()), "min_ms": float(a.min()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def synthetic_batch(engine, batch: int, size: int, seed: int) -> tuple[np.ndarray, str]:
    """Seeded input in the form predict/eval hand this engine, and its description for the report."""
    rng = np.random.default_rng(seed)
    if accepts_uint8(engine):
        return (rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
                "synthetic uint8 NHWC pixels, uniform, seeded (the engine normalizes)")
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32), "synthetic float32 NCHW N(0,1), seeded"


def _run_instances(art_dir: str, engine: str, threads: int, batch: int, instances: int, warmup: float,
                   duration: Optional[float], iterations: Optional[int], seed: int, process: int,
                   barrier: Optional[threading.Barrier] = None) -> list[Counter]:
    """Run `instances` engine copies in threads; they warm up and measure together. `barrier` spans every
    instance of every process when there are several processes (vamp -p), so they too measure together."""
    art = Artifact.load(Path(art_dir), verify_hashes=False)  # the parent process verified it
    size = art.preprocessing.input_size
    engines = [load_engine(art, engine, threads=threads) for _ in range(instances)]
    x, described = synthetic_batch(engines[0], batch, size, seed)
    counters = [Counter(i, process, inference_precision=getattr(e, "inference_precision", None), input=described)
                for i, e in enumerate(engines)]
    start = barrier or threading.Barrier(instances)

    failures: list[BaseException] = []

    def loop(k: int) -> None:
        try:
            measure(k)
        except BaseException as e:  # a thread's exception would otherwise vanish (and leave no runs)
            failures.append(e)
            start.abort()  # release the other instances from the barrier

    def measure(k: int) -> None:
        eng, c = engines[k], counters[k]
        start.wait()
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            eng.run(x)
        start.wait()  # measure together, after everyone's warm-up
        c.started = time.perf_counter()
        deadline = c.started + duration if duration else None
        while True:
            t = time.perf_counter()
            eng.run(x)
            c.ended = time.perf_counter()
            c.latencies.append(c.ended - t)
            if (iterations and len(c.latencies) >= iterations) or (deadline and c.ended >= deadline):
                break

    workers = [threading.Thread(target=loop, args=(k,), name=f"cvzoo-bench-{k}") for k in range(instances)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for c, e in zip(counters, engines):
        c.tuning = getattr(e, "tuning", None) or None
        e.close()
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if real:
        raise CvzooError(f"{art.name}: engine '{engine}' failed during the benchmark: "
                         f"{type(real[0]).__name__}: {str(real[0]).strip().splitlines()[0] if str(real[0]).strip() else ''}")
    if failures:  # only a broken barrier: another process's instance failed (that process reports why)
        raise CvzooError(ABORTED)
    return counters


ABORTED = "stopped: an instance in another bench process failed"


def _process_main(args, queue):
    try:
        queue.put(("ok", _run_instances(*args)))
    except BaseException as e:  # report, don't hang the parent
        queue.put(("error", str(e) if isinstance(e, CvzooError) else f"{type(e).__name__}: {e}"))


def _run_processes(args: tuple, processes: int, instances: int, seed: int, target=_process_main) -> list[Counter]:
    """`processes` spawned copies of _run_instances, all instances behind one barrier. A process that fails,
    or dies without a word (killed, out of memory), breaks the barrier so the others stop waiting, and is one
    error; the first real cause is reported, not a bystander's "stopped". (`target` lets a test stand in a
    process that loads slowly or dies.)"""
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(processes * instances)
    procs = [ctx.Process(target=target, args=((*args, seed + p, p, barrier), queue))
             for p in range(processes)]
    for p in procs:
        p.start()
    counters: list[Counter] = []
    errors: list[str] = []
    pending = processes
    while pending:
        try:
            status, payload = queue.get(timeout=1.0)
        except queue_mod.Empty:
            dead = [(k, p.exitcode) for k, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                errors.append(f"process {dead[0][0]} exited with code {dead[0][1]} before reporting")
                break
            continue
        pending -= 1
        if status == "ok":
            counters += payload
        else:
            errors.append(payload)
            barrier.abort()
    if errors:
        barrier.abort()
        for p in procs:
            p.terminate()
    for p in procs:
        p.join()
    if errors:
        raise CvzooError(f"bench process failed: {next((e for e in errors if e != ABORTED), errors[0])}")
    return counters


def bench_batch(art: Artifact, engine: str, batch: int, instances: int, processes: int, threads: int,
                warmup: float, duration: Optional[float], iterations: Optional[int], seed: int) -> dict:
    t0 = time.perf_counter()
    args = (str(art.folder), engine, threads, batch, instances, warmup, duration, iterations)
    if processes == 1:
        counters = _run_instances(*args, seed, 0)
    else:
        counters = _run_processes(args, processes, instances, seed)
    wall = time.perf_counter() - t0 - warmup
    # throughput over the measured window: from the first instance's first run to the last one's last run
    first = min(c.started for c in counters)
    window = max(c.ended for c in counters) - first
    runs = sum(len(c.latencies) for c in counters)
    all_lat = [t for c in counters for t in c.latencies]
    return {
        "batch": batch, "instances": instances, "processes": processes, "threads_per_instance": threads,
        "input": counters[0].input, "inference_precision": counters[0].inference_precision,
        **({"engine_tuning": counters[0].tuning} if counters[0].tuning else {}),
        "runs": runs, "images": runs * batch, "seconds": window, "wall_seconds": round(wall, 3),
        "throughput_ips": runs * batch / window,
        "latency": latency_stats(all_lat),
        "per_instance": [{"process": c.process, "instance": c.instance, "runs": len(c.latencies),
                          "throughput_ips": len(c.latencies) * batch / (c.ended - c.started),
                          # its measured window, in seconds from the first instance's start: shows they overlapped
                          "window_s": [round(c.started - first, 4), round(c.ended - first, 4)],
                          **latency_stats(c.latencies)}
                         for c in counters],
    }


def layer_profile(art: Artifact, engine: str, batch: int, threads: int, runs: int, seed: int) -> dict:
    """Each layer's mean time over `runs` runs from the engine's own profiler (as benchmark_app -pc, trtexec
    --dumpProfile), in the order it ran them, and the time by precision: where an int8 build still computes in
    float shows here."""
    eng = load_engine(art, engine, threads=threads)
    if not hasattr(eng, "layer_profile"):
        raise CvzooError(f"--layers: engine {engine} has no per-layer profiler (onnxruntime and openvino have)")
    x = synthetic_batch(eng, batch, art.preprocessing.input_size, seed)[0]
    layers = eng.layer_profile(x, runs)
    by_precision: dict[str, float] = {}
    for layer in layers:
        by_precision[layer.precision] = by_precision.get(layer.precision, 0.0) + layer.ms
    return {"batch": batch, "runs": runs, "threads": threads, "total_ms": sum(by_precision.values()),
            "by_precision_ms": dict(sorted(by_precision.items(), key=lambda kv: -kv[1])),
            "layers": [asdict(layer) for layer in layers]}


def bench_images(art: Artifact, engine: str, folder: Path, batch: int, threads: int, duration: float,
                 workers: Optional[int]) -> dict:
    """End to end: decode + preprocess (thread pool) + inference, on real files, cycled."""
    from .predict import Predictor
    from .preprocess import find_images
    paths, _ = find_images([folder])
    if not paths:
        raise CvzooError(f"{folder}: no images found")
    # speed only: weights need not be trained, and bench verified the files when it loaded the artifact
    p = Predictor(art.folder, engine=engine, threads=threads, random_init=True, verify_hashes=False)
    n, skipped, t0 = 0, {}, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        for pred in p.predict_paths(paths, batch=batch, workers=workers):
            if pred.ok:
                n += 1
            else:  # a file that cannot be decoded is no image/s
                skipped[pred.path] = pred.error
        if n == 0:
            first = next(iter(skipped.values()))
            raise CvzooError(f"{folder}: none of its {len(paths)} files could be decoded ({first})")
    seconds = time.perf_counter() - t0
    decode_t0, m = time.perf_counter(), 0
    from .preprocess import decode_stream
    for d in decode_stream(paths, art.preprocessing, workers, pixels=p.pixels):
        m += d.error is None
    decode_s = time.perf_counter() - decode_t0
    return {"images": n, "seconds": seconds, "end_to_end_ips": n / seconds, "batch": batch,
            "decode_preprocess_only_ips": m / decode_s, "files": len(paths), "skipped": list(skipped.values())}


def torch_eager_ips(art: Artifact, batch: int, threads: int, warmup: float, duration: float) -> dict:
    """The same architecture in PyTorch eager fp32 on CPU, the way timm's benchmark.py runs it."""
    import torch

    from .models import build_model
    torch.set_num_threads(threads)
    model = build_model(art.manifest.card)
    size = art.preprocessing.input_size
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32))
    lat = []
    with torch.inference_mode():
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            model(x)
        t_end = time.perf_counter() + duration
        while time.perf_counter() < t_end or len(lat) < 3:
            t = time.perf_counter()
            model(x)
            lat.append(time.perf_counter() - t)
    return {"throughput_ips": batch * len(lat) / sum(lat), **latency_stats(lat)}


def torch_gpu_baselines(art: Artifact, batch: int, warmup: float, duration: float) -> dict:
    """On a GPU, the two bars issue 7 names: timm's benchmark way (eager, AMP fp16, channels-last) and
    plain torch.compile (default mode) of the same. Written for the torch-cuda engine; measured only where
    a GPU exists (not on the CI machine)."""
    import torch

    from .models import build_model
    size = art.preprocessing.input_size
    model = build_model(art.manifest.card).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    out = {}
    for tag, fn in (("timm_eager_amp_fp16", model), ("torch_compile_fp16", torch.compile(model))):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            t_end = time.perf_counter() + warmup
            while time.perf_counter() < t_end:
                fn(x)
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < duration:
                fn(x)
                n += 1
            torch.cuda.synchronize()
        out[tag] = {"throughput_ips": n * batch / (time.perf_counter() - t0)}
    return out


def bench(model: Union[str, Path], engine: Optional[str] = None, batches: Sequence[int] = (1, 8), instances: int = 1,
          processes: int = 1, threads: Optional[int] = None, warmup: float = 1.0, duration: Optional[float] = 5.0,
          iterations: Optional[int] = None, size: Optional[int] = None, images: Optional[Path] = None,
          vs_torch: bool = False, seed: int = 0, weights: Optional[str] = None, progress=None,
          verify_hashes: bool = True, layers: bool = False) -> dict:
    """`layers`: also each layer's time at the first batch size, from the engine's profiler."""
    def check(engine: Optional[str]) -> None:
        check_engine_options(engine, threads)
        if engine == "torch-cuda":
            from .engines.torch_cuda import require_cuda
            require_cuda()
    check(engine)  # before a zoo name is exported: a bad flag should not cost an export
    bad = [b for b in batches if b < 1]
    if bad or not batches:
        raise CvzooError(f"--batch values must be >= 1, got {','.join(map(str, batches)) or 'nothing'}")
    if instances < 1 or processes < 1:
        raise CvzooError("--instances and --processes must be >= 1")
    if iterations is not None and iterations < 1:
        raise CvzooError("--iterations must be >= 1")
    if iterations is None and not (duration and duration > 0):
        raise CvzooError(f"--time must be > 0 seconds (or give --iterations), got {duration}")
    if warmup < 0:
        raise CvzooError(f"--warmup must be >= 0 seconds, got {warmup}")
    from .predict import artifact_for
    art = Artifact.load(artifact_for(model, weights, size, random_init=True), verify_hashes=verify_hashes)
    if art.random_init and progress:
        progress(f"{art.name}: random init (no checkpoint): the speed is the model's, any predictions are not")
    engine = engine_for(art, engine)
    check(engine)
    cores = physical_cores()
    threads = threads or max(1, cores // (instances * processes))
    report = {"model": art.name, "artifact": str(art.folder), "precision": art.precision, "engine": engine,
              "random_init": art.random_init,
              "input_size": art.preprocessing.input_size,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions("cvzoo", "onnxruntime", "openvino", "torch", "numpy"),
              "settings": {"instances": instances, "processes": processes, "threads_per_instance": threads,
                           "warmup_s": warmup, "time_s": None if iterations else duration, "iterations": iterations,
                           "seed": seed, "input": "synthetic, seeded (each result's `input` says which form)"},
              "results": []}
    for b in batches:
        if progress:
            limit = f"{iterations} runs per instance" if iterations else f"{duration:g} s"
            progress(f"batch {b}: {instances} instance(s) x {processes} process(es), {threads} thread(s) each; "
                     f"{warmup:g} s warm-up, then {limit}")
        r = bench_batch(art, engine, b, instances, processes, threads, warmup, None if iterations else duration,
                        iterations, seed)
        if vs_torch and engine == "torch-cuda":
            base = torch_gpu_baselines(art, b, warmup, duration or 3.0)
            r.update({f"torch_{k}": v for k, v in base.items()})
            r["speedup_vs_timm_eager_amp"] = r["throughput_ips"] / base["timm_eager_amp_fp16"]["throughput_ips"]
            r["speedup_vs_torch_compile"] = r["throughput_ips"] / base["torch_compile_fp16"]["throughput_ips"]
            r["note"] = ("torch-cuda numbers include the uint8 batch's trip from pinned host memory, its "
                         "normalization and the logits' way back; the torch baselines run on device-resident input "
                         "(benchmarks/gpu_torch_cuda.py compares all three on device-resident input)")
        elif vs_torch:
            t = torch_eager_ips(art, b, cores, warmup, duration or 3.0)
            r["torch_eager_fp32"] = t
            r["speedup_vs_torch_eager"] = r["throughput_ips"] / t["throughput_ips"]
        report["results"].append(r)
    if layers:
        runs = iterations or 20
        if progress:
            progress(f"layers: the engine's profiler at batch {batches[0]}, {runs} runs after one warm-up")
        report["layer_profile"] = layer_profile(art, engine, batches[0], threads, runs, seed)
    if images:
        if progress:
            progress(f"end to end on {images}")
        report["end_to_end"] = bench_images(art, engine, Path(images), max(batches), cores, duration or 5.0, None)
    return report


# --vs-torch ratios (CPU engines | GPU engine) and their table headings
SPEEDUP_HEADS = {"speedup_vs_torch_eager": "vs torch eager", "speedup_vs_timm_eager_amp": "vs timm eager AMP",
                 "speedup_vs_torch_compile": "vs torch.compile"}
SPEEDUPS = list(SPEEDUP_HEADS)
CSV_FIELDS = ["model", "precision", "engine", "batch", "instances", "processes", "threads_per_instance",
              "throughput_ips", "mean_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", *SPEEDUPS]


def csv_rows(report: dict) -> list[dict]:
    return [{"model": report["model"], "precision": report["precision"], "engine": report["engine"],
             **{k: r[k] for k in ("batch", "instances", "processes", "threads_per_instance", "throughput_ips")},
             **r["latency"], **{k: r.get(k) for k in SPEEDUPS}} for r in report["results"]]
