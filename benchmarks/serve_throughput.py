"""Serving: `cvzoo serve` (dynamic batching) under load from locust vs `cvzoo bench` engine-only on the same artifact
and machine, in one run. Writes JSON (and prints Markdown).

    python benchmarks/serve_throughput.py --out benchmarks/results/serve_throughput.json [--soak-minutes 10]

Load generator: locust (FastHttpUser, headless), KServe v2 requests in Triton's binary format; Triton's perf_analyzer
is what the issue asks for first, but PyPI's `perf-analyzer` is a 0.1.0 placeholder on these machines. For each
fixture x engine: the default guarded int8 build (calibrated on ../shared/data/imagenet-sample); engine-only images/s
at batch 1 and at --max-batch (`cvzoo bench`, one instance); the server at --users concurrent clients, one FP32 tensor
per request, then one JPEG per request (Imagenette val, top-1 checked against `cvzoo predict`), against
`cvzoo bench --images`. The load generator shares the machine's cores with the server: on 2 cores its own CPU time is
part of what is measured. --soak-minutes: the first model at concurrency 32 with 5% bad requests mixed in; every good
answer's top-1 checked; the server's RSS after warm-up and at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
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


def start_server(art: Path, engine: str, max_batch: int, delay_ms: float) -> tuple[subprocess.Popen, str]:
    import httpx
    p = port()
    proc = subprocess.Popen([sys.executable, "-m", "cvzoo", "serve", str(art), "--engine", engine, "--port", str(p),
                             "--max-batch", str(max_batch), "--max-delay-ms", str(delay_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{p}"
    for _ in range(600):
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
    raise RuntimeError("server not ready")


def locust(url: str, env: dict, users: int, seconds: float, tmp: Path, tag: str) -> dict:
    prefix = tmp / tag
    counts = tmp / f"{tag}-counts.json"
    subprocess.run([sys.executable, "-m", "locust", "-f", str(HERE / "serve_locustfile.py"), "--headless",
                    "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "-H", url, "--csv", str(prefix),
                    "--only-summary", "--loglevel", "ERROR"],
                   env={**os.environ, **env, "CVZOO_COUNTS": str(counts)}, check=False, capture_output=True)
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    agg = rows["Aggregated"]
    out = {"requests": int(agg["Request Count"]), "failures": int(agg["Failure Count"]),
           "requests_per_s": round(float(agg["Requests/s"]), 2),
           **{f"p{q}_ms": float(agg[f"{q}%"]) for q in (50, 90, 99)}}
    if counts.exists():
        out["counts"] = json.loads(counts.read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dla34-imagenette,ese_vovnet19b_dw-imagenette")
    ap.add_argument("--engines", default=None, help="default: the CPU engines installed")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--soak-minutes", type=float, default=0)
    ap.add_argument("--out", default="benchmarks/results/serve_throughput.json")
    args = ap.parse_args()
    from cvzoo.artifact import Artifact
    from cvzoo.bench import bench
    from cvzoo.build import build
    from cvzoo.buildconfig import parse_config
    from cvzoo.engines import installed_cpu_engines
    from cvzoo.machine import machine_info
    from cvzoo.postprocess import write_text_atomic
    from cvzoo.predict import Predictor
    engines = args.engines.split(",") if args.engines else installed_cpu_engines()
    rows, first = [], None
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        val = SHARED / "imagenette-val"
        for name in args.models.split(","):
            files = sorted(val.rglob("*.JPEG"))[::5]  # 200 of the 1000, every class
            for engine in engines:
                art = build(parse_config({"model": name, "weights": "default", "dtype": "int8", "engine": engine,
                                          "workspace": str(tmp / "ws"), "name": f"{name}-{engine}",
                                          "calibration": {"path": str(SHARED / "imagenet-sample")}}),
                            force=True, say=lambda m: None)
                a = Artifact.load(art)
                size = a.preprocessing.input_size
                pred = Predictor(art, engine=engine)
                expected = [[str(f), p.ids[0]] for f, p in zip(files, pred.predict_paths(files, topk=1))]
                pred.close()
                rep = bench(art, engine=engine, batches=(1, args.max_batch), duration=args.seconds / 2, warmup=1.0,
                            images=val)
                ips = {r["batch"]: r["throughput_ips"] for r in rep["results"]}
                proc, url = start_server(art, engine, args.max_batch, args.max_delay_ms)
                env = {"CVZOO_MODEL": a.name, "CVZOO_SIZE": str(size), "CVZOO_FILES": json.dumps(expected)}
                try:
                    locust(url, {**env, "CVZOO_MODE": "tensor"}, args.users, 5, tmp, "warm")
                    tensor = locust(url, {**env, "CVZOO_MODE": "tensor"}, args.users, args.seconds, tmp, "tensor")
                    jpeg = locust(url, {**env, "CVZOO_MODE": "jpeg"}, args.users, args.seconds, tmp, "jpeg")
                    rss = rss_mb(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
                row = {"model": name, "engine": engine, "input_size": size, "form": a.manifest.build.quantization.form,
                       "users": args.users, "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms,
                       "engine_only_ips_b1": round(ips[1], 2), f"engine_only_ips_b{args.max_batch}":
                           round(ips[args.max_batch], 2),
                       "served_tensor": tensor, "served_vs_engine_only": round(tensor["requests_per_s"] /
                                                                               ips[args.max_batch], 3),
                       "bench_images_ips": round(rep["end_to_end"]["end_to_end_ips"], 2), "served_jpeg": jpeg,
                       "served_jpeg_vs_bench_images": round(jpeg["requests_per_s"] /
                                                            rep["end_to_end"]["end_to_end_ips"], 3),
                       "server_rss_mb": round(rss, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                first = first or (art, engine, env, row)
        if args.soak_minutes:  # after the speed rows: it checks answers and memory, not speed
            art, engine, env, row = first
            proc, url = start_server(art, engine, args.max_batch, args.max_delay_ms)
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
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "load_generator": "locust (FastHttpUser)",
              "rows": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| model | engine | engine-only b1 / b8 img/s | served tensor img/s (p50 / p99 ms) | served / engine-only b8 "
             "| bench --images img/s | served JPEG img/s (p50 / p99 ms) | served JPEG / bench --images |",
             "|" + "---|" * 8]
    for r in report["rows"]:
        t, j = r["served_tensor"], r["served_jpeg"]
        b8 = [v for k, v in r.items() if k.startswith("engine_only_ips_b") and k != "engine_only_ips_b1"][0]
        lines.append(f"| {r['model']} | {r['engine']} | {r['engine_only_ips_b1']:.1f} / {b8:.1f} | "
                     f"{t['requests_per_s']:.1f} ({t['p50_ms']:.0f} / {t['p99_ms']:.0f}) | {r['served_vs_engine_only']:.2f} | "
                     f"{r['bench_images_ips']:.1f} | {j['requests_per_s']:.1f} ({j['p50_ms']:.0f} / {j['p99_ms']:.0f}) | "
                     f"{r['served_jpeg_vs_bench_images']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
