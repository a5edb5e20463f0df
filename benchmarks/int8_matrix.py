"""The int8 table: accuracy and speed together, cvzoo's default build next to its fully quantized --no-guard build and
to NNCF on the same calibration photos, on ONNX Runtime and OpenVINO. Writes JSON (and prints Markdown).

    pip install -e ".[bench]"  # NNCF
    python benchmarks/int8_matrix.py --out benchmarks/results/int8_matrix.json [--models ...] [--engines ...]

For each Imagenette fixture and each calibration folder (../shared/data/imagenet-sample: generic photos of other
classes; ../shared/data/imagenette-val: in-domain), with the build's defaults (300 calibration images, 200 held
out for the guard): top-1 on the Imagenette val images used by neither, against the fp32 export; int8 b1/b8 times
against fp32 and against --no-guard, the three (four with NNCF) timed in turns, 15 rounds: ratios are taken
round by round and their median reported (`default_is_noguard`: the two model files are the same bytes). NNCF (`nncf.quantize` on the same fp32
ONNX, its defaults, subset_size = the same calibration images) is evaluated and timed the same way; a graph an
engine cannot load is reported as such. tf_efficientnet_lite0 (real ImageNet weights; `--imagenet-models` for others
such as tf_efficientnet_lite1,tf_efficientnet_lite2): calibrated on part of the ImageNet sample, evaluated on the rest. Run on an idle machine (timings are medians of interleaved runs).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cvzoo.artifact import Artifact
from cvzoo.build import build
from cvzoo.buildconfig import parse_config
from cvzoo.calibration import load_arrays
from cvzoo.card import get_card
from cvzoo.datasets import load_samples
from cvzoo.engines import installed_cpu_engines, load_engine
from cvzoo.errors import TargetMissed
from cvzoo.machine import machine_info
from cvzoo.postprocess import write_text_atomic
from cvzoo.runners import in_batches, int8_layers, model_runner, time_rounds
from shared_data import SHARED

FIXTURES = ["dla34-imagenette", "cspresnet50-imagenette", "ese_vovnet19b_dw-imagenette", "efficientnetv2_rw_t-imagenette"]
TARGET = {"efficientnetv2_rw_t-imagenette": 1.0}  # other fixtures: 0.3; real ImageNet weights: 0.5 (lite0's bar)


def labelled(folder: str, model: str) -> list[tuple[Path, int]]:
    """(file, class index in the model's classes): eval's own reading of a labelled folder."""
    return [(s.path, s.label) for s in load_samples(SHARED / folder, get_card(model).synsets)]


def nncf_quantize(fp32: Path, calib: np.ndarray, out: Path) -> tuple[Path, float]:
    import nncf
    import onnx
    t0 = time.perf_counter()
    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    q = nncf.quantize(model, nncf.Dataset([{name: calib[i:i + 1]} for i in range(len(calib))]), subset_size=len(calib))
    onnx.save(q, str(out))
    return out, time.perf_counter() - t0


def top1(run, arrays: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((in_batches(run, arrays, 50).argmax(1) == labels).mean())


def runner(path_or_art, engine: str):
    if isinstance(path_or_art, Artifact):
        return load_engine(path_or_art, engine).run
    return model_runner(Path(path_or_art), engine)


def card_size(name: str) -> int:
    """The input size of the published card a fixture's architecture comes from (dla34 -> 224, ...)."""
    return get_card(get_card(name).arch).preprocessing.input_size


def torch_eager(name: str):
    """PyTorch eager fp32 on the CPU (all cores), the bar of the cards' deploy tables."""
    import torch
    from cvzoo.models import create_model
    model = create_model(name, weights="default")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    return run


def one(name: str, calib_dir: Path, eval_files: list[tuple[Path, int]], engines: list[str], ws: Path,
        with_nncf: bool, target_cpu: str = "auto", size: int | None = None) -> dict:
    tag = calib_dir.name
    sized = {"input_size": size} if size else {}
    row: dict = {"model": name, "calibration": tag, "target_drop": TARGET.get(name, 0.3 if name in FIXTURES else 0.5), "engines": {}, **sized}
    fp32 = Artifact.load(build(parse_config({"model": name, "weights": "default", "workspace": str(ws),
                                             "name": f"{name}-fp32", **sized}), force=True, say=lambda m: None))
    for engine in engines:
        cfg = {"model": name, "weights": "default", "dtype": "int8", "engine": engine, "workspace": str(ws),
               "calibration": {"path": str(calib_dir)}, "quantize": {"target_cpu": target_cpu}, **sized}
        t0 = time.perf_counter()
        log: list[str] = []
        try:
            default = Artifact.load(build(parse_config({**cfg, "name": f"{name}-{tag}-{engine}-default"}), force=True,
                                          say=log.append))
            missed = None
        except TargetMissed as e:
            missed, default = str(e), None
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        nog = Artifact.load(build(parse_config({**cfg, "name": f"{name}-{tag}-{engine}-noguard",
                                                "guard": {"enabled": False}}), force=True, say=lambda m: None))
        nog_seconds = time.perf_counter() - t0
        ref = default or nog
        m = ref.manifest.build
        used = {f.path for f in m.calibration.files} | set(m.guard.held_out)
        rest = [(f, y) for f, y in eval_files if str(f) not in used]
        arrays = load_arrays([f for f, _ in rest], fp32.preprocessing)[0]
        labels = np.array([y for _, y in rest])
        runs = {"fp32": runner(fp32, engine), "noguard": runner(nog, engine)}
        if default:
            runs["default"] = runner(default, engine)
        e: dict = {"eval_images": len(rest), "build_seconds": round(seconds, 1), "noguard_build_seconds": round(nog_seconds, 1),
                   "default_missed_target": missed}
        if with_nncf:
            calib = load_arrays([Path(f.path) for f in m.calibration.files], fp32.preprocessing)[0]
            p, secs = nncf_quantize(fp32.model_path, calib, ws / f"{name}-{tag}-nncf.onnx")
            e["nncf_seconds"] = round(secs, 1)
            try:
                runs["nncf"] = runner(p, engine)
                runs["nncf"](arrays[:1])
            except Exception as err:  # an engine that cannot load NNCF's graph: reported, not fatal
                runs.pop("nncf", None)
                e["nncf_error"] = str(err).splitlines()[0][:300]
        paths = {"noguard": nog.model_path, **({"default": default.model_path} if default else {}),
                 **({"nncf": p} if "nncf" in runs else {})}
        for k, path in paths.items():  # what the engine computes in int8, read from its compiled graph
            e[f"{k}_int8_layers"] = list(int8_layers(path, engine))
        for k, run in runs.items():
            e[f"{k}_top1"] = top1(run, arrays, labels)
            if k != "fp32":
                e[f"{k}_drop"] = round(e["fp32_top1"] - e[f"{k}_top1"], 2)
        if size:  # at the cards' sizes the speed is also held against torch eager fp32 (timed, not evaluated)
            runs["torch"] = torch_eager(name)
        shape = (1, 3, fp32.preprocessing.input_size, fp32.preprocessing.input_size)
        for b in (1, 8):
            t = time_rounds(runs, (b, *shape[1:]), rounds=15, seconds=0.2)
            e[f"ms_b{b}"] = {k: round(1000 * float(np.median(v)), 3) for k, v in t.items()}
            # ratios round by round (the runners take turns within a round), then their median
            ratio = lambda a, c: round(float(np.median(np.array(t[a]) / np.array(t[c]))), 3)
            for k in runs:
                if k not in ("fp32", "torch"):
                    e[f"{k}_speedup_b{b}"] = ratio("fp32", k)
                    if "torch" in t:
                        e[f"{k}_vs_torch_b{b}"] = ratio("torch", k)
            if "default" in t:
                e[f"default_vs_noguard_b{b}"] = ratio("noguard", "default")
        if default:
            e["default_is_noguard"] = default.model_path.read_bytes() == nog.model_path.read_bytes()
        if default:
            q = default.manifest.build.quantization
            e.update({"form": q.form, "plan": q.plan, "excluded_nodes": len(q.excluded_nodes),
                      "steps": [(s["step"], s["kept"]) for s in q.steps],
                      "guard_after": default.manifest.build.guard.after.model_dump()})
        e["noguard_form"] = nog.manifest.build.quantization.form
        row["engines"][engine] = e
        print(json.dumps({"model": name, "calibration": tag, "engine": engine,
                          **{k: v for k, v in e.items() if k != "guard_after"}}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(FIXTURES))
    ap.add_argument("--calib", default="imagenet-sample,imagenette-val")
    ap.add_argument("--engines", default=",".join(installed_cpu_engines()))
    ap.add_argument("--no-nncf", action="store_true")
    ap.add_argument("--imagenet-models", default="tf_efficientnet_lite0", help="models with real ImageNet weights, "
                    "calibrated on part of the ImageNet sample and evaluated on the rest (comma-separated; '' for none)")
    ap.add_argument("--no-lite0", dest="imagenet_models", action="store_const", const="", help="--imagenet-models ''")
    ap.add_argument("--target-cpu", default="auto", help="no_vnni: the forms a CPU without VNNI gets (accuracy "
                    "carries over to it, speed does not)")
    ap.add_argument("--card-size", action="store_true", help="build at the input size of the published card of each "
                    "fixture's architecture (224/256/288) and time PyTorch eager fp32 beside the engines")
    ap.add_argument("--out", default="benchmarks/results/int8_matrix.json")
    ap.add_argument("--table", nargs="+", help="only print the Markdown table of earlier runs' JSON (a later file's "
                    "engines replace an earlier one's for the same model and calibration)")
    args = ap.parse_args()
    if args.table:
        print(markdown(combined([json.loads(Path(f).read_text()) for f in args.table])))
        return
    engines = args.engines.split(",")
    with_nncf = not args.no_nncf
    if with_nncf:
        import nncf  # noqa: F401  (pip install nncf: fail before any work)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        for name in [m for m in args.models.split(",") if m]:
            for calib in args.calib.split(","):
                rows.append(one(name, SHARED / calib, labelled("imagenette-val", name), engines, ws, with_nncf,
                                args.target_cpu, card_size(name) if args.card_size else None))
        for name in [m for m in args.imagenet_models.split(",") if m]:
            rows.append(one(name, SHARED / "imagenet-sample", labelled("imagenet-sample", name), engines, ws,
                            with_nncf, args.target_cpu))
    import importlib.metadata as md
    report = {"machine": machine_info(), "target_cpu": args.target_cpu, "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "versions": {p: md.version(p) for p in ("onnxruntime", "openvino", "nncf", "onnx") if _has(p)}}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    print(markdown(report))


def combined(reports: list[dict]) -> dict:
    """Rows of several runs (e.g. one engine rerun after a change): later engines replace earlier ones."""
    rows: dict[tuple, dict] = {}
    for report in reports:
        for r in report["rows"]:
            row = rows.setdefault((r["model"], r["calibration"]), {**r, "engines": {}})
            row["engines"].update(r["engines"])
    return {"rows": list(rows.values())}


def markdown(report: dict) -> str:
    lines = ["| model | calibration | engine | fp32 | default (drop) | --no-guard (drop) | NNCF (drop) | int8 layers "
             "(default / no-guard / NNCF) "
             "| default vs fp32 b1 / b8 | default vs --no-guard b1 / b8 | NNCF vs fp32 b1 / b8 |", "|" + "---|" * 11]
    for r in report["rows"]:
        for engine, e in r["engines"].items():
            def cell(k):
                if k + "_top1" in e:
                    return f"{e[k + '_top1']:.1f} ({e[k + '_drop']:+.1f})"
                return "missed target" if k == "default" else ("does not load" if "nncf_error" in e else "-")

            def ratio(k):
                return f"{e[k + '_b1']:.2f} / {e[k + '_b8']:.2f}" if k + "_b1" in e else "-"
            same = " (same graph)" if e.get("default_is_noguard") else ""

            def layers():  # as the engine compiled each graph; older runs recorded only the nodes the build excluded
                if "noguard_int8_layers" not in e:
                    return f"{e.get('excluded_nodes', '-')} excluded"
                return " / ".join(f"{e[k + '_int8_layers'][0]}/{e[k + '_int8_layers'][1]}"
                                  if k + "_int8_layers" in e else "-" for k in ("default", "noguard", "nncf"))
            lines.append(f"| {r['model'].removesuffix('-imagenette')} | {r['calibration']} | {engine} | "
                         f"{e['fp32_top1']:.1f} | {cell('default')} | {cell('noguard')} | {cell('nncf')} | "
                         f"{layers()} | {ratio('default_speedup')} | {ratio('default_vs_noguard')}{same} | "
                         f"{ratio('nncf_speedup')} |")
    sized = [r for r in report["rows"] if r.get("input_size")]
    if sized:
        lines += ["", "| model | size | calibration | engine | default vs torch eager fp32 b1 / b8 | --no-guard vs torch "
                  "eager b1 / b8 |", "|" + "---|" * 6]
        for r in sized:
            for engine, e in r["engines"].items():
                pair = lambda k: f"{e[k + '_b1']:.2f} / {e[k + '_b8']:.2f}" if k + "_b1" in e else "-"
                lines.append(f"| {r['model'].removesuffix('-imagenette')} | {r['input_size']} | {r['calibration']} | "
                             f"{engine} | {pair('default_vs_torch')} | {pair('noguard_vs_torch')} |")
    return "\n".join(lines)


def _has(pkg: str) -> bool:
    import importlib.metadata as md
    try:
        md.version(pkg)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
