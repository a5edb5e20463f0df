"""`cvzoo serve` beside the peer a user would otherwise run, KServe's Python ModelServer (PyPI `kserve`, the Open
Inference Protocol over FastAPI + uvicorn, as cvzoo's), on the same int8 artifact, engine and load, in one run.
Writes JSON (and prints Markdown).

    python benchmarks/serve_vs_kserve.py --out benchmarks/results/serve_vs_kserve.json

KServe runs in a venv of its own (`--kserve-venv`, made here on first use: kserve and this venv's engine versions;
its pins clash with cvzoo's), serving the artifact through cvzoo's `load_engine` (benchmarks/serve_kserve.py), so the
engine and its session options are the same and only the server differs. KServe has no batching in the server
(Kubernetes deployments batch in a sidecar agent): each request runs at batch 1, `predict` on the event loop as
KServe's own model servers do (`kserve`), or in a thread pool (`kserve_thread`).
Per fixture x engine, --rounds rounds, each: engine-only images/s at batch 1 and --max-batch (`cvzoo bench`), then
each server under wrk at --users connections, one FP32 tensor per request, in Triton's binary format and as JSON
numbers (both servers read both; which is faster differs); each round's ratios cancel the machine's drift, and the
row reports their medians. Before the load, each server's answer in each format is checked against the engine's
top-1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from serve_bodies import TENSOR_BODIES, seeded_image  # this folder is on sys.path when the script runs
from serve_throughput import HERE, int8_artifact, port, start_server, wait_ready, with_cpu, wrk

KSERVE = "kserve==0.21.0"
SERVERS = ("cvzoo", "kserve", "kserve_thread")
LOADS = [f"{server} {fmt}" for server in SERVERS for fmt in TENSOR_BODIES]


def kserve_python(venv: Path) -> Path:
    """The venv's python, after installing KServe and this venv's engines at the same versions if it has none."""
    py = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        from cvzoo.engines import installed_cpu_engines
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        engines = [f"{e}=={version(e)}" for e in installed_cpu_engines()]
        subprocess.run([str(py), "-m", "pip", "install", "-q", KSERVE, *engines], check=True)
        (venv / ".installed").touch()
    return py


def start_kserve(py: Path, art: Path, engine: str, threads: int, predict: str, log: Path
                 ) -> tuple[subprocess.Popen, str]:
    p = port()
    with open(log, "w") as err:  # a file, not a pipe: KServe logs as it runs
        proc = subprocess.Popen([str(py), str(HERE / "serve_kserve.py"), str(art), "--engine", engine, "--threads",
                                 str(threads), "--port", str(p), "--predict", predict],
                                env={**os.environ, "PYTHONPATH": str(HERE.parent)}, stdout=subprocess.DEVNULL,
                                stderr=err)
    url = f"http://127.0.0.1:{p}"
    try:
        wait_ready(proc, url)  # KServe answers /v2/health/ready too
    except RuntimeError:
        raise RuntimeError(f"KServe did not start: {log.read_text()[-2000:]}") from None
    return proc, url


def top1(url: str, model: str, body: tuple[bytes, dict]) -> int:
    import httpx
    r = httpx.post(f"{url}/v2/models/{model}/infer", content=body[0], headers=body[1], timeout=30)
    r.raise_for_status()
    return int(r.json()["outputs"][0]["data"][0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dla34-imagenette,ese_vovnet19b_dw-imagenette")
    ap.add_argument("--engines", default=None, help="default: the CPU engines installed")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kserve-venv", type=Path, default=HERE.parent / ".venv-kserve")
    ap.add_argument("--out", default="benchmarks/results/serve_vs_kserve.json")
    args = ap.parse_args()
    from cvzoo.artifact import Artifact
    from cvzoo.bench import bench
    from cvzoo.engines import installed_cpu_engines, load_engine
    from cvzoo.machine import machine_info, physical_cores
    from cvzoo.postprocess import write_text_atomic
    py = kserve_python(args.kserve_venv)
    threads = physical_cores()  # one engine instance on every core, in each server and in `cvzoo bench`
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name in args.models.split(","):
            for engine in (args.engines.split(",") if args.engines else installed_cpu_engines()):
                art = int8_artifact(name, engine, tmp)
                a = Artifact.load(art)
                size = a.preprocessing.input_size
                bodies = {fmt: make(size) for fmt, make in TENSOR_BODIES.items()}
                expected = int(load_engine(a, engine, threads=threads).run(seeded_image(size)).argmax())
                procs = {"cvzoo": start_server(art, engine, args.max_batch, 2.0, 1, threads),
                         **{k: start_kserve(py, art, engine, threads, how, tmp / f"{k}.log")
                            for k, how in (("kserve", "loop"), ("kserve_thread", "thread"))}}
                rounds = []
                try:
                    answers = {f"{k} {fmt}": top1(url, a.name, b) for k, (_, url) in procs.items()
                               for fmt, b in bodies.items()}
                    if any(v != expected for v in answers.values()):
                        raise SystemExit(f"{name} {engine}: top-1 {answers}, the engine says {expected}")
                    for k, (proc, url) in procs.items():  # warm-up
                        wrk(url, a.name, [bodies["binary"]], args.users, 3, tmp, f"warm-{k}")
                    for i in range(args.rounds):
                        only = {f"b{b}": bench(art, engine=engine, batches=(b,), duration=args.seconds / 2,
                                               warmup=1.0, threads=threads)["results"][0]["throughput_ips"]
                                for b in (1, args.max_batch)}
                        rounds.append({"engine_only_ips": {k: round(v, 2) for k, v in only.items()},
                                       **{f"{k} {fmt}": with_cpu(proc.pid, lambda: wrk(
                                           url, a.name, [b], args.users, args.seconds, tmp, f"{k}-{fmt}{i}"))
                                          for k, (proc, url) in procs.items() for fmt, b in bodies.items()}})
                finally:
                    for proc, _ in procs.values():
                        proc.terminate()
                        proc.wait(timeout=60)

                def ratio(load: str, batch: str) -> float:
                    return statistics.median(r[load]["requests_per_s"] / r["engine_only_ips"][batch] for r in rounds)
                row = {"model": name, "engine": engine, "input_size": size, "form": a.manifest.build.quantization.form,
                       "users": args.users, "max_batch": args.max_batch, "threads": threads,
                       "engine_only_ips": {b: round(statistics.median(r["engine_only_ips"][b] for r in rounds), 2)
                                           for b in ("b1", f"b{args.max_batch}")},
                       "requests_per_s": {k: round(statistics.median(r[k]["requests_per_s"] for r in rounds), 2)
                                          for k in LOADS},
                       "vs_engine_only_b1": {k: round(ratio(k, "b1"), 3) for k in LOADS},
                       f"vs_engine_only_b{args.max_batch}": {k: round(ratio(k, f"b{args.max_batch}"), 3)
                                                             for k in LOADS},
                       "rounds": rounds}
                print(json.dumps(row), flush=True)
                rows.append(row)
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "kserve": KSERVE, "rows": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| model | engine | engine only b1 / b8 img/s | server, request format "
             "| req/s (p50 / p90 / p99 ms, median round) | / engine b1 | / engine b8 "
             "| event loop ms of CPU per request |", "|" + "---|" * 8]
    for r in report["rows"]:
        b = f"b{r['max_batch']}"
        for k in LOADS:
            mid = sorted(r["rounds"], key=lambda x: x[k]["requests_per_s"])[len(r["rounds"]) // 2][k]
            lines.append(f"| {r['model']} | {r['engine']} | {r['engine_only_ips']['b1']:.1f} / "
                         f"{r['engine_only_ips'][b]:.1f} | {k} | {r['requests_per_s'][k]:.1f} ({mid['p50_ms']:.0f} / "
                         f"{mid['p90_ms']:.0f} / {mid['p99_ms']:.0f}) | {r['vs_engine_only_b1'][k]:.2f} | "
                         f"{r['vs_engine_only_' + b][k]:.2f} | {mid['cpu']['event_loop_ms_per_request']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
