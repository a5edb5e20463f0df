"""Serving: `cvzoo serve` (dynamic batching) under load vs `cvzoo bench` engine-only on the same artifact and machine,
in one run. Writes JSON (and prints Markdown).

    python benchmarks/serve_throughput.py --out benchmarks/results/serve_throughput.json [--soak-minutes 10]

Load generators, each at --users concurrent connections, KServe v2 requests in Triton's binary format:
- perf_analyzer (Triton's, C++; `bash benchmarks/perf_analyzer_setup.sh` where pip cannot install PyPI's
  `perf-analyzer`, as on Debian 12): every output asked for; it fails on any error;
- wrk (C, one thread, epoll; Debian's `wrk` package, benchmarks/serve_wrk.lua): light enough that the server gets
  most of the cores; it counts non-2xx answers but does not read them;
- locust (FastHttpUser, headless): a Python process that needs most of a core at these rates, and checks every JPEG
  answer's top-1 against `cvzoo predict`.
For each fixture x engine: the default guarded int8 build (calibrated on ../shared/data/imagenet-sample); engine-only
images/s at batch 1 (`cvzoo bench`, --instances, --threads, as the server); then --rounds rounds, each engine-only at
--max-batch followed by the server under each generator with one FP32 tensor per request: each round's ratio cancels
the machine's drift, and the row reports the median, an interval that holds the true median with at least 90%
probability (paired_rounds.py) and whether that lies above or below --target; then one JPEG per request (Imagenette
val), against `cvzoo bench --images`. Each served run records where the CPU went: the server's event loop, its other
threads (engines, decoding), the load generator, idle.
--soak-minutes: the first model at concurrency 32 with 5% bad requests mixed in (locust: every good answer's top-1
checked); the server's RSS after warm-up and at the end.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from cvzoo.serve.protocol import encode_bytes
from paired_rounds import median_interval, verdict  # this folder is on sys.path when the script runs
from serve_bodies import jpeg_body, seeded_image, tensor_body
from shared_data import SHARED

HERE = Path(__file__).resolve().parent


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds from a /proc stat file (a process's, or one of its threads')."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each of a process's threads, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = stat_cpu_s(Path(f"/proc/{pid}/task/{tid}/stat"))
        except FileNotFoundError:  # the thread ended in between
            continue
    return out


def with_cpu(pid: int, load) -> dict:
    """`load()`'s result, with where the machine's CPU went while it ran: the server's event loop (its main thread),
    its other threads (the engines, the decode pool), the load generator (this process's children) and idle."""
    before, kids, t0 = thread_cpu_s(pid), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    r = load()
    after, kids2, wall = thread_cpu_s(pid), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    loop = after.get(pid, 0) - before.get(pid, 0)
    rest = sum(v - before.get(k, 0) for k, v in after.items() if k != pid)
    gen = kids2.ru_utime + kids2.ru_stime - kids.ru_utime - kids.ru_stime
    cores = len(os.sched_getaffinity(0))
    return {**r, "cpu": {"event_loop_ms_per_request": round(1000 * loop / max(r["requests"], 1), 3),
                         "event_loop_cores": round(loop / wall, 3),
                         "engine_and_other_threads_cores": round(rest / wall, 3),
                         "load_generator_cores": round(gen / wall, 3),
                         "idle_cores": round(cores - (loop + rest + gen) / wall, 3)}}


def int8_artifact(name: str, engine: str, tmp: Path) -> Path:
    """The fixture's default guarded int8 build for `engine`, calibrated on ImageNet photos of other classes."""
    from cvzoo.build import build
    from cvzoo.buildconfig import parse_config
    return build(parse_config({"model": name, "weights": "default", "dtype": "int8", "engine": engine,
                               "workspace": str(tmp / "ws"), "name": f"{name}-{engine}",
                               "calibration": {"path": str(SHARED / "imagenet-sample")}}),
                 force=True, say=lambda m: None)


def start_server(art: Path, engine: str, max_batch: int, delay_ms: float, instances: int, threads: Optional[int],
                 *extra: str) -> tuple[subprocess.Popen, str]:
    p = port()
    proc = subprocess.Popen([sys.executable, "-m", "cvzoo", "serve", str(art), "--engine", engine, "--port", str(p),
                             "--max-batch", str(max_batch), "--max-delay-ms", str(delay_ms),
                             "--instances", str(instances), *(["--threads", str(threads)] if threads else []),
                             *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{p}"
    wait_ready(proc, url)
    return proc, url


def wait_ready(proc: subprocess.Popen, url: str) -> None:
    """Until the server answers ready; its stderr (if piped) when it exits first."""
    import httpx
    for _ in range(600):
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read() if proc.stderr else f"server exited with {proc.returncode}")
    raise RuntimeError("server not ready")


def locust(url: str, env: dict, users: int, seconds: float, tmp: Path, tag: str) -> dict:
    prefix = tmp / tag
    counts = tmp / f"{tag}-counts.json"
    subprocess.run([sys.executable, "-m", "locust", "-f", str(HERE / "serve_locustfile.py"), "--headless",
                    "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "-H", url, "--csv", str(prefix),
                    "--only-summary", "--loglevel", "ERROR"],
                   env={**os.environ, **env, "CVZOO_COUNTS": str(counts), "PYTHONPATH": str(HERE)}, check=False,
                   capture_output=True)
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    agg = rows["Aggregated"]
    out = {"requests": int(agg["Request Count"]), "failures": int(agg["Failure Count"]),
           "requests_per_s": round(float(agg["Requests/s"]), 2),
           **{f"p{q}_ms": float(agg[f"{q}%"]) for q in (50, 90, 99)}}
    if counts.exists():
        out["counts"] = json.loads(counts.read_text())
    return out


def wrk(url: str, model: str, bodies: list[tuple[bytes, dict]], users: int, seconds: float, tmp: Path,
        tag: str) -> dict:
    listing = tmp / f"{tag}-bodies.txt"
    lines = []
    for i, (body, headers) in enumerate(bodies):
        (tmp / f"{tag}-{i}.bin").write_bytes(body)
        lines.append(f"{headers['Inference-Header-Content-Length']} {tmp / f'{tag}-{i}.bin'}")
    listing.write_text("\n".join(lines) + "\n")
    out = tmp / f"{tag}-wrk.json"
    env = {**os.environ, "CVZOO_WRK_PATH": f"/v2/models/{model}/infer", "CVZOO_WRK_BODIES": str(listing),
           "CVZOO_WRK_OUT": str(out)}
    subprocess.run(["wrk", "-t1", f"-c{users}", f"-d{int(seconds)}s", "--timeout", "10s", "-s",
                    str(HERE / "serve_wrk.lua"), url], env=env, check=True, capture_output=True)
    r = json.loads(out.read_text())
    return {"requests": r["requests"], "failures": r["non_2xx"] + r["socket_errors"],
            "requests_per_s": round(r["requests"] / r["duration_s"], 2),
            **{k: round(r[k], 1) for k in ("p50_ms", "p90_ms", "p99_ms")}}


def perf_analyzer_data(size: int, jpegs: list[Path]) -> dict[str, list[dict]]:
    """perf_analyzer's --input-data, by mode: the seeded FP32 tensor, or each JPEG as the `image` input alone (its
    b64 is the raw BYTES tensor: a 4-byte length, then the file)."""
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()
    return {"tensor": [{"input": {"b64": b64(seeded_image(size).tobytes()), "shape": [3, size, size]}}],
            "jpeg": [{"image": {"b64": b64(encode_bytes([f.read_bytes()])), "shape": [1]}} for f in jpegs]}


def perf_analyzer(cmd: str, url: str, model: str, inputs: list[dict], users: int, seconds: float, tmp: Path,
                  tag: str, tries: int = 3) -> dict:
    """Triton's load generator at `users` concurrent requests, cycling over `inputs` (perf_analyzer_data's), asking
    for every output; its windows of seconds / 3 repeat until three agree within 10% (at most 20 windows), and the
    rate and latencies are theirs. A run that ends in error is run again, up to `tries` times in all, and its message
    kept in the result (`retried`)."""
    data, out = tmp / f"{tag}-pa.json", tmp / f"{tag}-pa.csv"
    data.write_text(json.dumps({"data": inputs}))
    retried = []
    for _ in range(tries):
        t0 = time.perf_counter()
        run = subprocess.run([*shlex.split(cmd), "-m", model, "-u", url.removeprefix("http://"), "-i", "http",
                              "--concurrency-range", str(users), "--measurement-interval",
                              str(round(seconds * 1000 / 3)), "--max-trials", "20", "--input-data", str(data),
                              "-f", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if run.returncode == 0:
            break
        said = [line for line in (run.stderr.strip() or run.stdout.strip()).splitlines() if line.strip()]
        retried.append(f"exit {run.returncode}: {said[-1].strip() if said else 'no output'}")
        print(f"perf_analyzer {tag}: {retried[-1]}", file=sys.stderr, flush=True)
    else:
        raise RuntimeError(f"perf_analyzer failed {tries} times; last: {retried[-1]}")
    r = next(csv.DictReader(open(out)))
    rate = float(r["Inferences/Second"])
    return {"requests": round(rate * wall), "failures": 0, "requests_per_s": round(rate, 2),  # fails on an error
            **{f"p{q}_ms": round(float(r[f"p{q} latency"]) / 1000, 1) for q in (50, 90, 99)},
            # the server's own split of a request's time, from its statistics extension
            "server_ms": {part: round(float(r[f"Server {head}"]) / 1000, 3)
                          for part, head in (("queue", "Queue"), ("compute_input", "Compute Input"),
                                             ("compute_infer", "Compute Infer"), ("compute_output", "Compute Output"))
                          if r.get(f"Server {head}")},
            **({"retried": retried} if retried else {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dla34-imagenette,ese_vovnet19b_dw-imagenette")
    ap.add_argument("--engines", default=None, help="default: the CPU engines installed")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10, help="each served run; engine-only runs half of it")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--instances", type=int, default=1, help="engine instances, in the server and engine-only alike")
    ap.add_argument("--threads", type=int, default=None,
                    help="per instance, in the server and engine-only alike (default: cores / instances)")
    ap.add_argument("--soak-minutes", type=float, default=0)
    ap.add_argument("--load-generators", default=None,
                    help="wrk,locust,perf_analyzer (default: wrk and locust, where wrk is installed)")
    ap.add_argument("--perf-analyzer", default=None,
                    help="its command (default: .perf-analyzer/perf_analyzer from perf_analyzer_setup.sh, else PATH)")
    ap.add_argument("--rounds", type=int, default=9,
                    help="engine-only and served FP32-tensor runs, taking turns; each row reports the median ratio "
                         "(5 or more for a 90%% interval)")
    ap.add_argument("--target", type=float, default=0.9, help="served / engine-only at --max-batch to reach")
    ap.add_argument("--serve-args", default="", help="more `cvzoo serve` options")
    ap.add_argument("--out", default="benchmarks/results/serve_throughput.json")
    args = ap.parse_args()
    from cvzoo.artifact import Artifact
    from cvzoo.bench import bench
    from cvzoo.engines import installed_cpu_engines
    from cvzoo.machine import machine_info
    from cvzoo.postprocess import write_text_atomic
    from cvzoo.predict import Predictor
    engines = args.engines.split(",") if args.engines else installed_cpu_engines()
    generators = (args.load_generators or ("wrk,locust" if shutil.which("wrk") else "locust")).split(",")
    local_pa = HERE.parent / ".perf-analyzer" / "perf_analyzer"
    pa = args.perf_analyzer or (str(local_pa) if local_pa.exists() else "perf_analyzer")
    rows, first = [], None
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        val = SHARED / "imagenette-val"
        for name in args.models.split(","):
            files = sorted(val.rglob("*.JPEG"))[::5]  # 200 of the 1000, every class
            for engine in engines:
                art = int8_artifact(name, engine, tmp)
                a = Artifact.load(art)
                size = a.preprocessing.input_size
                pred = Predictor(art, engine=engine)
                expected = [[str(f), p.ids[0]] for f, p in zip(files, pred.predict_paths(files, topk=1))]
                pred.close()
                rep = bench(art, engine=engine, batches=(1,), duration=args.seconds / 2, warmup=1.0, images=val,
                            instances=args.instances, threads=args.threads)
                proc, url = start_server(art, engine, args.max_batch, args.max_delay_ms, args.instances, args.threads,
                                         *args.serve_args.split())
                env = {"CVZOO_MODEL": a.name, "CVZOO_SIZE": str(size), "CVZOO_FILES": json.dumps(expected)}
                bodies = {"tensor": [tensor_body(size)], "jpeg": [jpeg_body(f.read_bytes()) for f in files]}
                pa_data = perf_analyzer_data(size, files) if "perf_analyzer" in generators else {}

                def load(gen: str, mode: str, tag: str) -> dict:
                    return with_cpu(proc.pid, lambda: (
                        wrk(url, a.name, bodies[mode], args.users, args.seconds, tmp, tag) if gen == "wrk"
                        else perf_analyzer(pa, url, a.name, pa_data[mode], args.users, args.seconds, tmp, tag)
                        if gen == "perf_analyzer"
                        else locust(url, {**env, "CVZOO_MODE": mode}, args.users, args.seconds, tmp, tag)))
                rounds = []
                try:
                    locust(url, {**env, "CVZOO_MODE": "tensor"}, args.users, 5, tmp, "warm")
                    # engine-only and served take turns: the machine's drift between rounds cancels in each ratio
                    for i in range(args.rounds):
                        only = bench(art, engine=engine, batches=(args.max_batch,), duration=args.seconds / 2,
                                     warmup=1.0, instances=args.instances, threads=args.threads
                                     )["results"][0]["throughput_ips"]
                        rounds.append({"engine_only_ips_bmax": round(only, 2),
                                       **{g: load(g, "tensor", f"tensor{i}") for g in generators}})
                    served = {f"{g}_jpeg": load(g, "jpeg", "jpeg") for g in generators}
                    rss = rss_mb(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
                ratios = {g: [r[g]["requests_per_s"] / r["engine_only_ips_bmax"] for r in rounds] for g in generators}
                intervals = {g: median_interval(ratios[g]) for g in generators}
                for g in generators:  # the round with the median ratio stands for the row
                    middle = sorted(range(len(rounds)), key=ratios[g].__getitem__)[len(rounds) // 2]
                    served[f"{g}_tensor"] = rounds[middle][g]
                e2e = rep["end_to_end"]["end_to_end_ips"]
                row = {"model": name, "engine": engine, "input_size": size, "form": a.manifest.build.quantization.form,
                       "users": args.users, "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms,
                       "instances": args.instances, "threads": args.threads, "serve_args": args.serve_args,
                       "engine_only_ips_b1": round(rep["results"][0]["throughput_ips"], 2),
                       "engine_only_ips_bmax": round(statistics.median(r["engine_only_ips_bmax"] for r in rounds), 2),
                       "bench_images_ips": round(e2e, 2), "rounds": rounds, "served": served,
                       "served_vs_engine_only": {g: round(statistics.median(ratios[g]), 3) for g in generators},
                       "served_vs_engine_only_rounds": {g: [round(x, 3) for x in ratios[g]] for g in generators},
                       "served_vs_engine_only_interval": {g: [round(v, 3) for v in intervals[g]] for g in generators},
                       "target": args.target,
                       "target_verdict": {g: verdict(intervals[g], args.target) for g in generators},
                       "served_jpeg_vs_bench_images": {g: round(served[f"{g}_jpeg"]["requests_per_s"] / e2e, 3)
                                                       for g in generators},
                       "server_rss_mb": round(rss, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                first = first or (art, engine, env, row)
        if args.soak_minutes:  # after the speed rows: it checks answers and memory, not speed
            art, engine, env, row = first
            proc, url = start_server(art, engine, args.max_batch, args.max_delay_ms, args.instances, args.threads,
                                     *args.serve_args.split())
            try:
                locust(url, {**env, "CVZOO_MODE": "soak"}, 32, 30, tmp, "soak-warm")
                before = rss_mb(proc.pid)
                soak = locust(url, {**env, "CVZOO_MODE": "soak"}, 32, args.soak_minutes * 60, tmp, "soak")
                after = rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            row["soak"] = {"minutes": args.soak_minutes, "users": 32, **soak, "rss_after_warmup_mb": round(before, 1),
                           "rss_end_mb": round(after, 1), "rss_growth": round(after / before - 1, 3)}
            print(json.dumps(row["soak"]), flush=True)
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "load_generators": generators,
              "rows": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| model | engine | load generator | engine-only b1 / bmax img/s | served tensor img/s (p50 / p90 / p99 ms) "
             "| served / engine-only bmax: median [interval] | target | bench --images img/s "
             "| served JPEG img/s (p50 / p90 / p99 ms) | served JPEG / bench --images |", "|" + "---|" * 10]
    for r in report["rows"]:
        for g in report["load_generators"]:
            t, j = r["served"][f"{g}_tensor"], r["served"][f"{g}_jpeg"]
            low, high, cov = r["served_vs_engine_only_interval"][g]
            lines.append(f"| {r['model']} | {r['engine']} | {g} | {r['engine_only_ips_b1']:.1f} / "
                         f"{r['engine_only_ips_bmax']:.1f} | {t['requests_per_s']:.1f} ({t['p50_ms']:.0f} / "
                         f"{t['p90_ms']:.0f} / {t['p99_ms']:.0f}) | {r['served_vs_engine_only'][g]:.2f} "
                         f"[{low:.2f}, {high:.2f}; {cov:.0%}] | {r['target_verdict'][g]} {r['target']:g} | "
                         f"{r['bench_images_ips']:.1f} | {j['requests_per_s']:.1f} ({j['p50_ms']:.0f} / "
                         f"{j['p90_ms']:.0f} / {j['p99_ms']:.0f}) | {r['served_jpeg_vs_bench_images'][g]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
