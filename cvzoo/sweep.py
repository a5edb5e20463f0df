"""`cvzoo sweep`: build + eval (+ bench) each (model, precision) and write the zoo table — locally or as
Ray tasks on a cluster. Each job's result is a JSON file; jobs with a result are not redone."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import CvzooError, Say
from .postprocess import writable_folder, write_text_atomic


@dataclass(frozen=True)
class Job:
    model: str
    dtype: str
    data: str
    out: str
    calib: Optional[str] = None
    count: Optional[int] = None
    calibrate_mode: Optional[str] = None
    weights: Optional[str] = "default"
    bench: bool = False
    bench_seconds: float = 2.0
    limit: Optional[int] = None
    engine: str = "onnxruntime"

    @property
    def key(self) -> str:  # the engine is part of it: a cached result is only reused for the same engine
        return f"{self.model}-{self.dtype}" + ("" if self.engine == "onnxruntime" else f"-{self.engine}")

    @property
    def result_path(self) -> Path:
        return Path(self.out) / "jobs" / f"{self.key}.json"


def run_job(job: Job) -> dict:
    """Build, evaluate, optionally benchmark one (model, precision). Runs anywhere cvzoo is installed."""
    from .bench import bench
    from .build import build
    from .buildconfig import parse_config
    from .card import get_card
    from .evaluate import evaluate
    from .profile import profile_model
    cfg = {"model": job.model, "weights": job.weights, "dtype": job.dtype, "workspace": str(Path(job.out) / "artifacts"),
           "engine": job.engine, "name": job.key,
           "quantize": {"calibrate_mode": job.calibrate_mode} if job.calibrate_mode else {}}
    if job.dtype == "int8":
        if not job.calib:
            raise CvzooError(f"{job.key}: int8 needs --calib DIR")
        cfg["calibration"] = {"path": job.calib, **({"count": job.count} if job.count else {})}
    art = build(parse_config(cfg, f"sweep {job.key}"), force=True, say=lambda m: None)
    summary = evaluate(art, job.data, Path(job.out) / "eval" / job.key, limit=job.limit, progress=False, fresh=True)
    card = get_card(job.model)
    prof = profile_model(card)
    row = {"model": job.model, "source": card.published[0].source if card.published else "-", "precision": job.dtype,
           "engine": job.engine,
           "top1": summary["top1"], "top5": summary["top5"], "images": summary["counts"]["labelled"],
           "params_m": round(prof.params_m, 3), "gmacs": round(prof.gmacs, 3), "input_size": card.input_size,
           "eval_ips": summary["throughput"]["images_per_s"], "artifact": str(art)}
    if job.bench:
        rep = bench(art, batches=(1, 8), duration=job.bench_seconds, warmup=0.5)
        row["ips_b1"] = round(rep["results"][0]["throughput_ips"], 2)
        row["ips_b8"] = round(rep["results"][1]["throughput_ips"], 2)
    write_text_atomic(job.result_path, json.dumps(row, indent=2))
    return row


def _run_ray(jobs: list[Job], address: Optional[str], say: Say) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise CvzooError("--ray needs Ray: pip install 'cvzoo[ray]'") from None
    ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False,
             include_dashboard=False)
    remote = ray.remote(num_cpus=1)(run_job)
    futures = {remote.remote(job): job for job in jobs}
    rows = []
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        row = ray.get(done[0])
        say(f"done (ray): {futures[done[0]].key}: top1 {row['top1']}")
        rows.append(row)
    return rows


PRECISIONS = ["fp32", "fp16", "bf16", "int8"]
TABLE_FIELDS = ["model", "source", "precision", "engine", "top1", "top5", "delta_top1_vs_fp32", "ips", "params_m", "gmacs",
                "input_size"]


def sweep(models: Sequence[str], dtypes: Sequence[str], data: Path, out: Path, calib: Optional[Path] = None,
          bench: bool = False, ray_address: Optional[str] = None, use_ray: bool = False, count: Optional[int] = None,
          calibrate_mode: Optional[str] = None, weights: Optional[str] = "default", limit: Optional[int] = None,
          engine: str = "onnxruntime", bench_seconds: float = 2.0, say: Say = print) -> list[dict]:
    """Every model x precision, built for `engine` (openvino: fp16/bf16 computed in half precision on CPUs
    that have it, int8 in the QDQ form OpenVINO reads)."""
    from .buildconfig import parse_config
    from .card import get_card
    for m in models:
        get_card(m)  # fail before any work on an unknown name
    bad = [d for d in dtypes if d not in PRECISIONS]
    if bad:
        raise CvzooError(f"unknown precision '{bad[0]}' ({', '.join(PRECISIONS)})")
    for d in dtypes:  # what a build would refuse (bf16 on onnxruntime, int8 without --calib), before any job runs
        parse_config({"model": models[0], "dtype": d, "engine": engine,
                      **({"calibration": {"path": str(calib)}} if calib else {})}, f"sweep {d} on {engine}")
    if not Path(data).exists():
        raise CvzooError(f"{data}: evaluation data not found")
    writable_folder(out)
    jobs = [Job(m, d, str(Path(data).resolve()), str(Path(out).resolve()), str(Path(calib).resolve()) if calib else None,
                count, calibrate_mode, weights, bench, bench_seconds, limit=limit, engine=engine)
            for m in models for d in dtypes]
    rows, todo = [], []
    for job in jobs:
        if job.result_path.is_file():
            say(f"skip {job.key}: result exists ({job.result_path})")
            rows.append(json.loads(job.result_path.read_text()))
        else:
            todo.append(job)
    if todo and use_ray:
        rows += _run_ray(todo, ray_address, say)
    else:
        for job in todo:
            say(f"run {job.key}")
            rows.append(run_job(job))
    return write_table(rows, Path(out))


def write_table(rows: list[dict], out: Path) -> list[dict]:
    fp32 = {r["model"]: r["top1"] for r in rows if r["precision"] == "fp32"}
    table = []
    for r in sorted(rows, key=lambda r: (r["model"], PRECISIONS.index(r["precision"]))):
        delta = None if r["model"] not in fp32 or r["top1"] is None else round(r["top1"] - fp32[r["model"]], 3)
        table.append({**{k: r.get(k) for k in TABLE_FIELDS}, "engine": r.get("engine", "onnxruntime"),
                      "delta_top1_vs_fp32": delta,
                      "ips": r.get("ips_b8") or r.get("eval_ips")})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_FIELDS)
    w.writeheader()
    w.writerows(table)
    write_text_atomic(out / "zoo_table.csv", buf.getvalue())
    md = ["| " + " | ".join(TABLE_FIELDS) + " |", "|" + "---|" * len(TABLE_FIELDS)]
    md += ["| " + " | ".join("-" if r[k] is None else str(r[k]) for k in TABLE_FIELDS) + " |" for r in table]
    write_text_atomic(out / "zoo_table.md", "\n".join(md) + "\n")
    svg = _pareto(table, out / "pareto.png")
    from .report import sweep_report
    write_text_atomic(out / "index.html", sweep_report(table, rows, svg))
    return table


def _pareto(table: list[dict], path: Path) -> str:
    """Writes the plot as PNG and returns it as SVG (for index.html)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
    for prec, marker in markers.items():
        pts = [r for r in table if r["precision"] == prec and r["ips"] and r["top1"] is not None]
        if pts:
            ax.scatter([r["ips"] for r in pts], [r["top1"] for r in pts], marker=marker, label=prec, s=50)
            for r in pts:
                ax.annotate(r["model"], (r["ips"], r["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("images/s (CPU, batch 8 bench or eval)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("cvzoo: accuracy vs throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    plt.close(fig)
    tmp.replace(path)
    return svg.getvalue()
