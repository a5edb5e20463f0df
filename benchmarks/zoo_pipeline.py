"""Every network of the zoo through the pipeline at its card's own input size: fp32 export (simplified? verified how
closely?), then an unguarded int8 build per engine on a few calibration photos (does it build, and how many of its
conv/matmul layers does the engine compute in int8?). A check that no architecture or size breaks a step, not an
accuracy table: networks without a checkpoint here are exported from timm's seeded init. Writes JSON, prints Markdown.

    python benchmarks/zoo_pipeline.py --out benchmarks/results/zoo_pipeline.json [--models ...] [--engines ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cvzoo.artifact import Artifact
from cvzoo.build import build
from cvzoo.buildconfig import parse_config
from cvzoo.card import get_card, networks
from cvzoo.checkpoint import find_default_weights
from cvzoo.engines import installed_cpu_engines
from cvzoo.export import cached_export
from cvzoo.machine import machine_info
from cvzoo.postprocess import write_text_atomic
from shared_data import SHARED



def one(name: str, engines: list[str], calib: Path, count: int, ws: Path) -> dict:
    card = get_card(name)
    weights = find_default_weights(card)
    row: dict = {"model": name, "size": card.input_size, "weights": "default" if weights else "seeded init"}
    t0 = time.perf_counter()
    try:
        art = cached_export(card, weights, card.input_size)
    except Exception as e:  # reported per network: the run goes on
        row["export_error"] = str(e).splitlines()[0][:300]
        return row
    m = art.manifest
    v = m.export.verification
    import onnx
    row.update({"export_seconds": round(time.perf_counter() - t0, 1), "simplified": m.export.simplified,
                "nodes": len(onnx.load(str(art.model_path)).graph.node),
                "criterion": v.criterion, "max_abs_diff": v.max_abs_diff, "int8": {}})
    for engine in engines:
        t0 = time.perf_counter()
        cfg = {"model": name, "fp32": str(art.folder), "dtype": "int8", "engine": engine, "workspace": str(ws),
               "name": f"{name}-{engine}", "calibration": {"path": str(calib), "count": count, "holdout": count // 2},
               "guard": {"enabled": False}}
        try:
            out = build(parse_config(cfg), force=True, say=lambda m: None)
            q = Artifact.load(out).manifest.build.quantization
            n = q.int8_layers_at_runtime
            row["int8"][engine] = {"form": q.form, "int8_layers": [n.int8, n.all],
                                   "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:
            row["int8"][engine] = {"error": str(e).splitlines()[0][:300]}
        print(json.dumps({"model": name, "engine": engine, **row["int8"][engine]}), flush=True)
    return row


def markdown(report: dict) -> str:
    engines = report["engines"]
    lines = ["| model | size | weights | export | nodes | verified (max abs diff) | "
             + " | ".join(f"{e} int8 layers (form)" for e in engines) + " |", "|" + "---|" * (6 + len(engines))]
    for r in report["rows"]:
        if "export_error" in r:
            lines.append(f"| {r['model']} | {r['size']} | {r['weights']} | failed: {r['export_error']} |")
            continue
        cells = []
        for e in engines:
            i = r["int8"].get(e, {})
            cells.append(f"failed: {i['error']}" if "error" in i else
                         f"{i['int8_layers'][0]}/{i['int8_layers'][1]} ({i['form']})" if i else "-")
        lines.append(f"| {r['model']} | {r['size']} | {r['weights']} | "
                     f"{'simplified' if r['simplified'] else 'as traced'} | {r['nodes']} | {r['criterion']} "
                     f"({r['max_abs_diff']:.1e}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(c.name for c in networks()))
    ap.add_argument("--engines", default=",".join(installed_cpu_engines()))
    ap.add_argument("--calib", default=str(SHARED / "imagenet-sample"))
    ap.add_argument("--count", type=int, default=16, help="calibration photos (half as many more held out)")
    ap.add_argument("--out", default="benchmarks/results/zoo_pipeline.json")
    args = ap.parse_args()
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(n, engines, Path(args.calib), args.count, Path(tmp)) for n in args.models.split(",") if n]
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "engines": engines, "rows": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
