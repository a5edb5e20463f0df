"""`cvzoo bench` beside OpenVINO's own benchmark_app, on the same model files, in one run: do cvzoo's OpenVINO
numbers agree with the tool a user would check them with? Writes JSON (and prints Markdown).

    python benchmarks/bench_vs_benchmark_app.py --out benchmarks/results/bench_vs_benchmark_app.json [--models ...]

Per seed model at its card size (random init: speed does not depend on the weights): the fp32 export and an int8
QDQ build for OpenVINO (guard off, 40 calibration photos: this table is about the timer, not the quantizer). Three
settings, each the pair a user would compare:
- latency, batch 1 and 8: `cvzoo bench -e openvino -b N` (one instance, every core) against
  `benchmark_app -hint latency -shape [N,3,S,S]`;
- throughput, batch 1: `cvzoo bench -e openvino -i CORES` (one 1-thread instance per core) against
  `benchmark_app -hint throughput`.
benchmark_app is given `-infer_precision` = what cvzoo's engine computes for that artifact (f32 for both: an fp32
artifact runs in f32, and OpenVINO runs a QDQ graph's int8 layers in int8 either way). Its defaults are measured too
on the fp32 model, because on a CPU with bf16 or fp16 units they compute in that precision: a faster number that is
not the fp32 model's accuracy. The tools take turns, `--rounds` times; each round's ratio is taken and the median
reported, so drift of the machine between rounds cancels, with the interval that holds the true median with at least
90% probability (paired_rounds.py: 5 rounds or more; with 3, the range of the rounds holds it only 75% of the time).
Run on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cvzoo.artifact import Artifact, versions
from cvzoo.bench import bench
from cvzoo.build import build
from cvzoo.buildconfig import parse_config
from cvzoo.machine import machine_info, physical_cores
from cvzoo.postprocess import write_text_atomic
from paired_rounds import median_interval  # this folder is on sys.path when the script runs
from shared_data import SHARED

SEED_MODELS = ["dla34", "ese_vovnet19b_dw", "cspresnet50", "efficientnetv2_rw_t"]
SETTINGS = [("latency", 1), ("latency", 8), ("throughput", 1)]


def cvzoo_point(art: Path, hint: str, batch: int, seconds: int) -> dict:
    cores = physical_cores()
    instances, threads = (cores, 1) if hint == "throughput" else (1, cores)
    r = bench(art, engine="openvino", batches=(batch,), instances=instances, threads=threads, warmup=1.0,
              duration=seconds, verify_hashes=False)["results"][0]
    return {"throughput_ips": r["throughput_ips"], "p50_ms": r["latency"]["p50_ms"],
            "computes": r["inference_precision"], "instances": instances, "threads_per_instance": threads}


def benchmark_app_point(tool: str, art: Path, size: int, hint: str, batch: int, seconds: int,
                        precision: str | None) -> dict:
    with tempfile.TemporaryDirectory() as report:
        cmd = [tool, "-m", str(art / "model.onnx"), "-d", "CPU", "-hint", hint, "-shape", f"[{batch},3,{size},{size}]",
               "-t", str(seconds), "-json_stats", "True", "-report_type", "no_counters", "-report_folder", report]
        if precision:
            cmd += ["-infer_precision", precision]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"{' '.join(cmd)}: exit {run.returncode}: {run.stdout[-1500:]}{run.stderr[-1500:]}")
        got = json.loads((Path(report) / "benchmark_report.json").read_text())
    res, setup = got["execution_results"], got["configuration_setup"]
    computes = re.search(r"INFERENCE_PRECISION_HINT: <Type: '(\w+)'>", run.stdout)
    return {"throughput_ips": float(res["throughput"]), "p50_ms": float(res["latency (ms)"]),
            "computes": computes.group(1) if computes else None, "api": setup["API"],
            "infer_requests": int(setup["number of parallel infer requests"]), "command": " ".join(cmd[1:])}


def ratios(a: list[dict], b: list[dict], key: str) -> list[float]:
    return [x[key] / y[key] for x, y in zip(a, b)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(SEED_MODELS))
    ap.add_argument("--calib", default=str(SHARED / "imagenet-sample"))
    ap.add_argument("--seconds", type=int, default=4, help="per measurement (whole seconds: benchmark_app's -t)")
    ap.add_argument("--rounds", type=int, default=5, help="turns each tool takes per point")
    ap.add_argument("--out", default="benchmarks/results/bench_vs_benchmark_app.json")
    ap.add_argument("--table", help="print the Markdown table of an earlier run's JSON, run nothing")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())["rows"]))
        return
    # the venv's own first (run as .venv/bin/python, its bin/ need not be on PATH)
    tool = shutil.which("benchmark_app", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if not tool:
        raise SystemExit("benchmark_app not found: it comes with `pip install openvino` (cvzoo[openvino])")
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as ws:
        for name in args.models.split(","):
            arts = {"fp32": build(parse_config({"model": name, "workspace": ws}), say=lambda m: None),
                    "int8": build(parse_config({"model": name, "dtype": "int8", "workspace": ws, "engine": "openvino",
                                                "guard": {"enabled": False},
                                                "calibration": {"path": args.calib, "count": 40}}), say=lambda m: None)}
            for tag, art in arts.items():
                size = Artifact.load(art).preprocessing.input_size
                for hint, batch in SETTINGS:
                    ours, theirs, defaults = [], [], []
                    for _ in range(args.rounds):
                        ours.append(cvzoo_point(art, hint, batch, args.seconds))
                        theirs.append(benchmark_app_point(tool, art, size, hint, batch, args.seconds,
                                                          ours[-1]["computes"]))
                        if tag == "fp32":
                            defaults.append(benchmark_app_point(tool, art, size, hint, batch, args.seconds, None))
                    ips = ratios(ours, theirs, "throughput_ips")
                    row = {"model": name, "input_size": size,
                           "precision": tag, "hint": hint, "batch": batch,
                           "cvzoo": ours, "benchmark_app": theirs,
                           "cvzoo_vs_benchmark_app_ips": statistics.median(ips),
                           "cvzoo_vs_benchmark_app_ips_interval": median_interval(ips),
                           "cvzoo_vs_benchmark_app_p50": statistics.median(ratios(ours, theirs, "p50_ms"))}
                    if defaults:
                        row["benchmark_app_defaults"] = defaults
                        row["benchmark_app_defaults_vs_cvzoo_ips"] = statistics.median(ratios(defaults, ours,
                                                                                              "throughput_ips"))
                    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)
                    rows.append(row)
    report = {"machine": machine_info(), "versions": versions("cvzoo", "openvino"),
              "seconds_per_measurement": args.seconds, "rounds": args.rounds,
              "minutes": round((time.time() - t0) / 60, 1), "rows": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    med = lambda pts, k: statistics.median(p[k] for p in pts)  # noqa: E731
    lines = ["| model (size) | precision | setting | cvzoo img/s (p50 ms) | benchmark_app img/s (p50 ms) | "
             "cvzoo / benchmark_app [interval; coverage] | benchmark_app's defaults: computes, img/s |",
             "|" + "---|" * 7]
    for r in rows:
        d = r.get("benchmark_app_defaults")
        # runs from before the interval was kept: the median alone
        low, high, cov = r.get("cvzoo_vs_benchmark_app_ips_interval") or (None, None, None)
        interval = f" [{low:.2f}, {high:.2f}; {cov:.0%}]" if cov is not None else ""
        default = (f"{d[0]['computes']}, {med(d, 'throughput_ips'):.1f} "
                   f"({r['benchmark_app_defaults_vs_cvzoo_ips']:.2f}x cvzoo)") if d else "-"
        lines.append(f"| {r['model']} ({r['input_size']}) | {r['precision']} | {r['hint']} b{r['batch']} | "
                     f"{med(r['cvzoo'], 'throughput_ips'):.1f} ({med(r['cvzoo'], 'p50_ms'):.2f}) | "
                     f"{med(r['benchmark_app'], 'throughput_ips'):.1f} ({med(r['benchmark_app'], 'p50_ms'):.2f}) | "
                     f"{r['cvzoo_vs_benchmark_app_ips']:.2f}{interval} | {default} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
