"""`cvzoo` command line: a thin layer over the Python API. Heavy imports (torch) stay inside commands."""
from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import CvzooError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cvzoo: image-classification model zoo and deployment toolchain.")
# Off a terminal (a pipe, a file) rich would fit tables to 80 columns and cut names; there, lines are as long as
# their content.
console = Console(width=None if sys.stdout.isatty() else 100_000)
err_console = Console(stderr=True)
FORMATS = ("table", "plain", "csv", "json")
STDOUT = Path("-")  # as an output file: standard output (the table and summary then go to stderr or nowhere)
STATUS_STYLES = {"error": "red", "warning": "yellow", "skipped": "yellow"}


def heading(title: str) -> None:
    """A rule across the terminal, or 100 columns off one (the pipe console is 100,000 wide)."""
    from rich.rule import Rule
    console.print(Rule(title), width=min(console.width, 100))


def status_line(kind: str, text: str) -> None:
    """One line on stderr, `kind: text`, the text as it is (rich would read a '[b]' in a file name as markup)."""
    style = STATUS_STYLES[kind]
    err_console.print(f"[{style}]{kind}:[/{style}] {escape(text)}", highlight=False, soft_wrap=True)


def print_rows(rows: list[dict], title: str, fmt: Optional[str]) -> None:
    """rows as a rich table on a terminal, else plain aligned columns; or CSV / JSON when asked (`--format`)."""
    fmt = fmt or ("table" if sys.stdout.isatty() else "plain")
    if fmt not in FORMATS:
        raise CvzooError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    columns = list(rows[0]) if rows else []
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    elif fmt == "plain":
        cells = [columns] + [["-" if r[c] is None else str(r[c]) for c in columns] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        sys.stdout.write("".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n" for row in cells))
    else:
        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right" if rows and isinstance(rows[0][c], (int, float)) else "left")
        for r in rows:
            table.add_row(*("-" if r[c] is None else escape(str(r[c])) for c in columns))
        console.print(table)


def _verify_option():
    return typer.Option(True, "--verify/--no-verify",
                        help="check the artifact's files against their manifest sha256 before running (default)")


def _random_init_option():
    return typer.Option(False, "--random-init", help="run a model without trained weights anyway (its answers mean "
                                                      "nothing; for checking a pipeline)")


def _verify_note(verify: bool) -> bool:
    if not verify:
        status_line("warning", "--no-verify: the artifact's files are not checked against their manifest hashes")
    return verify


def _artifact_or_card(model: str):
    """An artifact directory or a zoo model name; both expose .preprocessing, .synsets, .class_names."""
    from .artifact import Artifact, is_artifact
    from .card import get_card
    return Artifact.load(Path(model)) if is_artifact(Path(model)) else get_card(model)


@app.command("list")
def list_cmd(family: Optional[str] = typer.Option(None, "--family", "-f", help="vovnet, cspnet, dla, efficientnet"),
             fmt: Optional[str] = typer.Option(None, "--format", help="table | plain | csv | json (default: table on a "
                                                                      "terminal, plain aligned columns otherwise)")):
    """Table of the zoo's models."""
    from .card import families, list_models
    if family is not None and family not in families():
        raise CvzooError(f"unknown family '{family}' (known: {', '.join(families())})")
    rows = []
    for card in list_models(family):
        pub = card.published[0] if card.published else None
        rows.append({"name": card.name, "family": card.family, "arch": card.arch, "input": card.input_size,
                     "classes": card.num_classes, "params_m": pub.params_m if pub else None,
                     "top1": pub.top1 if pub else None, "source": pub.source if pub else None})
    print_rows(rows, "cvzoo models", fmt)


@app.command()
def info(name: str):
    """A model card with every published result row."""
    from .card import get_card
    from .checkpoint import find_default_weights
    card = get_card(name)
    p = card.preprocessing
    console.print(f"[bold]{card.name}[/bold]  family={card.family}  arch={card.arch}  paper={card.paper or '-'}")
    if card.arch_kwargs:
        console.print(f"arch config: {card.arch_kwargs}")
    console.print(f"classes: {card.num_classes} ({card.labels})  checkpoint formats: {', '.join(card.checkpoint)}")
    rules = f"{p.resampler} {p.interpolation}" + (", EXIF orientation applied" if p.exif_orientation else "")
    if (p.long_side, p.crop_offset) != ("floor", "round"):
        rules += f", long side {p.long_side}ed, crop offset {p.crop_offset}ed"
    console.print(f"preprocessing: resize short side {p.resize_size} ({rules}) -> center-crop "
                  f"{p.input_size} (crop_pct {p.crop_pct}) -> /255 -> mean {list(p.mean)} std {list(p.std)}")
    weights = find_default_weights(card)
    console.print(f"default weights: {weights or (card.weights.model_dump(exclude_none=True) if card.weights else 'none')}")
    table = Table(title="published results")
    for col in ("source", "dataset", "top1", "top5", "FLOPs(G)", "params(M)", "input"):
        table.add_column(col)
    for r in card.published:
        table.add_row(r.source, r.dataset, f"{r.top1}", f"{r.top5 if r.top5 is not None else '-'}",
                      f"{r.flops_g if r.flops_g is not None else '-'}",
                      f"{r.params_m if r.params_m is not None else '-'}", str(r.input_size))
    console.print(table)


@app.command()
def profile(name: str, size: Optional[int] = typer.Option(None, help="input size (default: the card's)"),
            json_out: bool = typer.Option(False, "--json", help="print JSON")):
    """Params, measured GMACs, and FLOPs in the seed tables' convention (thop MACs x 2 / 0.9)."""
    import json
    from .card import get_card
    from .profile import profile_model
    card = get_card(name)
    prof = profile_model(card, size)
    if json_out:
        print(json.dumps(prof.as_dict(), indent=2))
        return
    table = Table(title=f"{card.name} @ {prof.input_size}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    row = card.published_row("timm") or (card.published[0] if card.published else None)
    table.add_column(f"published ({row.source if row else '-'})", justify="right")
    same = row is not None and row.input_size == prof.input_size
    table.add_row("params (M), all", f"{prof.params_m:.3f}", "")
    table.add_row("GMACs (conv/linear/matmul)", f"{prof.gmacs:.3f}", "")
    table.add_row("thop params (M)", f"{prof.thop_params_m:.3f}", f"{row.params_m}" if same else "")
    table.add_row("thop GMACs", f"{prof.thop_gmacs:.3f}", "")
    table.add_row("seed FLOPs (G) = thop MACs x 2/0.9", f"{prof.seed_flops_g:.3f}", f"{row.flops_g}" if same else "")
    console.print(table)


def _batch_arg(value: str):
    return value if value == "dynamic" else int(value)


@app.command("export")
def export_cmd(name: str,
               weights: Optional[str] = typer.Option(None, "--weights", "-w", help="checkpoint path, or 'default'"),
               size: Optional[int] = typer.Option(None, "--size", help="input size (default: the card's)"),
               opset: int = typer.Option(17, "--opset"),
               batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size"),
               out: Optional[Path] = typer.Option(None, "-o", "--out", help="artifact directory"),
               simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="onnxslim, kept only if verified"),
               checkpoint_format: str = typer.Option("auto", "--format", help="checkpoint layout; auto tries the card's"),
               force: bool = typer.Option(False, "--force", help="replace an existing artifact")):
    """Export to ONNX, verify ORT vs PyTorch (max |Δlogit| <= 1e-4), write an artifact directory."""
    from .export import export
    try:
        batch_value = _batch_arg(batch)
    except ValueError:
        raise CvzooError(f"--batch must be 'dynamic' or a positive integer, got '{batch}'") from None
    art = export(name, weights=weights, out=out, size=size, opset=opset, batch=batch_value,
                 simplify=simplify, force=force, checkpoint_format=checkpoint_format)
    path = art.folder
    v = art.manifest.export.verification
    console.print(f"exported [bold]{art.name}[/bold] -> {escape(str(path))}/model.onnx  opset {opset}, "
                  f"simplified={art.manifest.export.simplified}")
    console.print(f"verified: ORT vs PyTorch max |Δlogit| {v.max_abs_diff:.2e} (random {v.max_abs_diff_random:.2e}, "
                  f"real {v.max_abs_diff_real:.2e}) <= {v.tolerance:.0e}; top-1 agreement on real photos "
                  f"{100 * v.top1_agreement_real:.0f}%")
    if art.random_init:
        status_line("warning", "random init (no --weights): the graph and its speed are the model's, its predictions "
                    "are not")


def print_predictions_table(preds, title: str) -> None:
    table = Table(title=title)
    for col in ("image", "rank", "class id", "prob", "class name"):
        table.add_column(col, justify="right" if col in ("rank", "class id", "prob") else "left")
    for pred in preds:
        for r, (i, p, n) in enumerate(zip(pred.ids, pred.probs, pred.names)):
            table.add_row(escape(Path(pred.path).name) if r == 0 else "", str(r + 1), str(i), f"{p:.4f}", escape(n))
        table.add_section()
    console.print(table)


def run_predict(model: str, images: List[Path], topk: int = 5, batch: int = 8, out: Optional[Path] = None,
                jsonl: Optional[Path] = None, engine: Optional[str] = None, threads: Optional[int] = None,
                weights: Optional[str] = None, quiet: bool = False, verify: bool = True, random_init: bool = False) -> int:
    from .postprocess import result_txt_lines, writable_file, write_text_atomic
    from .predict import Predictor
    from .preprocess import find_images
    if topk < 1:
        raise CvzooError(f"--topk must be >= 1, got {topk}")
    if out is not None and out == jsonl == STDOUT:
        raise CvzooError("--out and --jsonl cannot both be '-' (standard output)")
    for dest in (out, jsonl):
        if dest is not None and dest != STDOUT:
            writable_file(dest)
    paths, errors = find_images(images)
    for line in errors:
        status_line("error", line)
    if not paths:
        raise CvzooError("no images to predict")
    predictor = Predictor(model, engine=engine, threads=threads, weights=weights, verify_hashes=_verify_note(verify),
                          random_init=random_init)
    good, bad = [], 0
    for pred in predictor.predict_paths(paths, topk=topk, batch=batch):
        if pred.ok:
            good.append(pred)
            for note in pred.warnings:
                status_line("warning", f"{pred.path}: {note}")
        else:
            bad += 1
            status_line("error", pred.error)
    outputs = {}
    if out:
        outputs[out] = "".join(line + "\n" for p in good for line in result_txt_lines(p))
    if jsonl:
        outputs[jsonl] = "".join(p.as_json() + "\n" for p in good)
    for dest, text in outputs.items():
        if dest == STDOUT:
            sys.stdout.write(text)
        else:
            write_text_atomic(dest, text)
    if not quiet and STDOUT not in outputs:
        print_predictions_table(good, f"{predictor.artifact.name} ({predictor.artifact.precision}, {predictor.engine.name})")
    (err_console if STDOUT in outputs else console).print(
        f"{len(good)} images predicted, {bad + len(errors)} skipped"
        + "".join(f"; wrote {escape(str(d)) if d != STDOUT else 'standard output'}" for d in outputs))
    return 0 if not (bad or errors) else 3


def _engine_option():
    return typer.Option(None, "--engine", "-e", help="onnxruntime | openvino | torch-cuda (default: the artifact's, "
                                                     "from its build; onnxruntime for a model name)")


@app.command()
def predict(model: str = typer.Argument(..., help="artifact directory or zoo model name"),
            images: List[Path] = typer.Argument(..., help="image files and/or folders"),
            topk: int = typer.Option(5, "--topk", "-k"),
            batch: int = typer.Option(8, "--batch", "-b"),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="result.txt (the seeds' format); '-': standard output"),
            jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="JSON lines output; '-': standard output"),
            engine: Optional[str] = _engine_option(),
            threads: Optional[int] = typer.Option(None, "--threads"),
            weights: Optional[str] = typer.Option(None, "--weights", "-w", help="with a model name: checkpoint or 'default'"),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no table"),
            verify: bool = _verify_option(),
            random_init: bool = _random_init_option()):
    """Top-k predictions with class names. Exit code 3 when some inputs were skipped."""
    raise typer.Exit(run_predict(model, images, topk, batch, out, jsonl, engine, threads, weights, quiet, verify,
                                 random_init))


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), "--out", "-o")):
    """The main job on the embedded default: tf_efficientnet_lite0 (PyPI ImageNet weights) -> export ->
    verify -> predict on the photos shipped in the package."""
    from .datasets import demo_images
    name = "tf_efficientnet_lite0"
    art = out / f"{name}-224-fp32"
    heading(f"1. export {name} with its PyPI ImageNet weights (verified against PyTorch)")
    export_cmd(name, weights="default", size=None, opset=17, batch="dynamic", out=art, simplify=True,
               checkpoint_format="auto", force=True)
    heading("2. predict with ONNX Runtime (no torch on this path)")
    code = run_predict(str(art), demo_images(), topk=5, batch=8, out=out / "result.txt")
    console.print(f"artifact: {art}  (manifest.json + model.onnx); result.txt: {out / 'result.txt'}")
    raise typer.Exit(code)


@app.command()
def build(target: str = typer.Argument(..., help="CONFIG.yaml, a model name, or an fp32 artifact of `cvzoo export`"),
          dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | fp16 | bf16 | int8 (bf16: --engine openvino or torch-cuda)"),
          weights: Optional[str] = typer.Option(None, "--weights", "-w"),
          size: Optional[int] = typer.Option(None, "--size"),
          engine: Optional[str] = typer.Option(None, "--engine", help="onnxruntime | openvino | torch-cuda: the engine it is built for (predict/eval/bench default to it)"),
          calib: Optional[Path] = typer.Option(None, "--calib", help="calibration image folder"),
          count: Optional[int] = typer.Option(None, "--count", help="calibration images (default 300, fewer in a small folder)"),
          seed: Optional[int] = typer.Option(None, "--seed"),
          holdout: Optional[float] = typer.Option(None, "--holdout", help="images held out for the guard: a number, or a share of the folder if < 1 (default: 200 or 20%, whichever is larger)"),
          calibrate_mode: Optional[str] = typer.Option(None, "--calibrate-mode", help="robust (default) | mean_minmax | minmax | percentile | entropy (kl_divergence) | distribution"),
          percentile: Optional[float] = typer.Option(None, "--percentile"),
          per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor"),
          symmetric: Optional[bool] = typer.Option(None, "--symmetric/--asymmetric", help="activations"),
          form: Optional[str] = typer.Option(None, "--format", help="auto | qdq | qoperator"),
          int8_weights: Optional[str] = typer.Option(None, "--weights-int8", help="auto | s8 | s7 (7-bit, ORT's reduce_range) | u8"),
          target_cpu: Optional[str] = typer.Option(None, "--target-cpu", help="auto (this CPU) | no_vnni: int8 for a CPU without VNNI (AVX2), built here: no full-range s8 weights"),
          quantize_outputs: Optional[bool] = typer.Option(None, "--qdq-outputs/--qdq-inputs-only", help="Q/DQ on conv outputs too, or on inputs only (default: measured for openvino)"),
          guard: Optional[bool] = typer.Option(None, "--guard/--no-guard"),
          min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="also require this top-1 agreement with fp32 (0-1)"),
          max_top1_drop: Optional[float] = typer.Option(None, "--max-top1-drop", help="points of top-1 on the held-out images (default 1.0)"),
          accept_degraded: bool = typer.Option(False, "--accept-degraded", help="write an int8 artifact that misses the target, marked degraded"),
          workspace: Optional[Path] = typer.Option(None, "--workspace", "-o"),
          name: Optional[str] = typer.Option(None, "--name", help="artifact folder name"),
          force: bool = typer.Option(False, "--force")):
    """Build an fp32 / fp16 / bf16 / int8 engine artifact (the seeds' `vamc build`)."""
    from .build import build as run_build
    from .buildconfig import load_config, parse_config
    from .artifact import Artifact, is_artifact
    is_file = target.endswith((".yaml", ".yml")) or Path(target).is_file()
    if is_artifact(Path(target)):  # an fp32 export: build from it instead of exporting again
        src = Artifact.load(Path(target))
        data = {"model": src.name, "fp32": target, "input_size": src.preprocessing.input_size, "opset": src.manifest.opset}
    else:
        data = load_config(Path(target)).model_dump(exclude_unset=True) if is_file else {"model": target}
    flags = {"dtype": dtype, "weights": weights, "input_size": size, "engine": engine, "workspace": workspace,
             "name": name}
    data.update({k: v for k, v in flags.items() if v is not None})
    sections = {
        "calibration": {"path": calib, "count": count, "seed": seed, "holdout": holdout},
        "quantize": {"calibrate_mode": calibrate_mode, "percentile": percentile, "per_channel": per_channel,
                     "symmetric_activations": symmetric, "format": form, "weights": int8_weights,
                     "target_cpu": target_cpu, "quantize_outputs": quantize_outputs},
        "guard": {"enabled": guard, "min_agreement": min_agreement, "max_top1_drop": max_top1_drop,
                  "accept_degraded": accept_degraded or None},
    }
    for section, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            data[section] = {**data.get(section, {}), **given}
    cfg = parse_config(data, target if is_file else "command line")
    run_build(cfg, force=force, say=lambda msg: console.print(msg, markup=False, highlight=False))


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="artifact directory or zoo model name"),
             data: Path = typer.Argument(..., help="synset folders, flat folder (+ --labels), or npz datalist .txt"),
             labels: Optional[Path] = typer.Option(None, "--labels", help="ground truth for a flat folder"),
             batch: int = typer.Option(32, "--batch", "-b"),
             workers: Optional[int] = typer.Option(None, "--workers", help="decode threads"),
             limit: Optional[int] = typer.Option(None, "--limit"),
             out: Path = typer.Option(Path("eval-out"), "--out", "-o"),
             engine: Optional[str] = _engine_option(),
             threads: Optional[int] = typer.Option(None, "--threads"),
             weights: Optional[str] = typer.Option(None, "--weights", "-w"),
             fresh: bool = typer.Option(False, "--fresh", help="discard earlier results in --out"),
             quiet: bool = typer.Option(False, "--quiet", "-q"),
             verify: bool = _verify_option(),
             random_init: bool = _random_init_option()):
    """Top-1/top-5 with per-class accuracy; resumable (rerun the same command after a kill)."""
    from .evaluate import evaluate
    s = evaluate(model, data, out, labels=labels, batch=batch, workers=workers, limit=limit, engine=engine,
                 threads=threads, weights=weights, fresh=fresh, progress=not quiet, verify_hashes=_verify_note(verify),
                 random_init=random_init)
    c = s["counts"]
    for item in s["skipped"]:
        status_line("skipped", item["reason"])
    if not quiet and s["worst_classes"] and s["top1"] is not None:
        table = Table(title="worst classes")
        for col in ("class", "top1", "images", "most confused with"):
            table.add_column(col)
        for w in s["worst_classes"][:5]:
            table.add_row(w["class"], f"{w['top1']:.1f}", str(w["images"]),
                          ", ".join(f"{n} ({k})" for n, k in w["most_confused_with"]))
        console.print(table)
    top = f"top1 {s['top1']:.3f}  top5 {s['top5']:.3f}" if s["top1"] is not None else "no labels: predictions only"
    t = s["throughput"]
    console.print(f"[bold]{s['model']}[/bold] ({s['precision']}, {s['engine']}): {top}  "
                  f"[{c['labelled']} labelled, {c['skipped']} skipped]  "
                  + (f"{t['images_per_s']} img/s" if t["images_per_s"] else "") + f"  -> {out}/summary.json, result.txt")


@app.command("eval-topk")
def eval_topk_cmd(result: Path = typer.Argument(..., help="result.txt in the seeds' format"),
                  model: Optional[str] = typer.Option(None, "--model", help="artifact or model name whose class order the ids use (default ImageNet-1k)")):
    """top-1/top-5 of a result.txt (the seeds' eval_topk.py), truth from each path's synset."""
    from .evaluate import eval_topk
    classes = _artifact_or_card(model) if model else None
    r = eval_topk(result, classes.synsets, classes.class_names, model) if classes else eval_topk(result)
    console.print(f"top1_rate: {r['top1']} top5_rate: {r['top5']}  ({r['images']} images"
                  + (f", {r['unlabelled']} without a synset" if r["unlabelled"] else "") + ")")


@app.command()
def valprep(src: Path = typer.Argument(..., help="flat folder of ILSVRC2012_val_*.JPEG"),
            labels: Path = typer.Option(..., "--labels", help="LOC_val_solution.csv, 'file index' lines, or one index per line"),
            dst: Optional[Path] = typer.Option(None, "--dst", help="default: sort in place"),
            mode: str = typer.Option("symlink", "--mode", help="move | copy | symlink")):
    """Sort a flat ImageNet val folder into synset sub-folders (idempotent)."""
    from .datatools import valprep as run
    if mode not in ("move", "copy", "symlink"):
        raise CvzooError(f"--mode must be move, copy or symlink, got '{mode}'")
    r = run(src, labels, dst, mode)
    console.print(f"placed {r['placed']} images ({mode}), {r['already_there']} already in place, {r['classes']} classes")


@app.command()
def image2npz(src: Path = typer.Argument(...), dst: Path = typer.Argument(...),
              datalist: Path = typer.Option(Path("npz_datalist.txt"), "--datalist", "--text-path"),
              model: Optional[str] = typer.Option(None, "--model", help="also store the model's preprocessed input")):
    """Decoded images as .npz (+ datalist), as the seeds' image2npz.py."""
    from .datatools import image2npz as run
    r = run(src, dst, datalist, _artifact_or_card(model).preprocessing if model else None)
    for e in r["errors"]:
        status_line("error", str(e))
    console.print(f"wrote {r['written']} npz files and {escape(str(datalist))}")


@app.command("bench")
def bench_cmd(model: str = typer.Argument(..., help="artifact directory or zoo model name"),
              engine: Optional[str] = _engine_option(),
              batch: str = typer.Option("1,8", "--batch", "-b", help="comma-separated batch sizes"),
              instances: int = typer.Option(1, "--instances", "-i"),
              processes: int = typer.Option(1, "--processes", "-p"),
              threads: Optional[int] = typer.Option(None, "--threads", help="per instance (default: cores / instances)"),
              warmup: float = typer.Option(1.0, "--warmup"),
              seconds: Optional[float] = typer.Option(None, "--time", help="seconds per batch size (default 5)"),
              iterations: Optional[int] = typer.Option(None, "--iterations", help="runs per instance instead of --time"),
              size: Optional[int] = typer.Option(None, "--size"),
              images: Optional[Path] = typer.Option(None, "--images", help="also measure decode+preprocess+infer on these"),
              vs_torch: bool = typer.Option(False, "--vs-torch", help="PyTorch eager in the same run, and the ratio"),
              weights: Optional[str] = typer.Option(None, "--weights", "-w"),
              json_out: Optional[Path] = typer.Option(None, "--json"),
              csv_out: Optional[Path] = typer.Option(None, "--csv"),
              layers: int = typer.Option(0, "--layers", help="also profile each layer at the first batch size and "
                                                             "show the N slowest (the JSON has them all)"),
              verify: bool = _verify_option()):
    """Throughput and latency percentiles (vamp -i/-p/-b style); JSON/CSV reports."""
    import csv
    import io
    import json
    from .bench import CSV_FIELDS, SPEEDUP_HEADS, bench, csv_rows
    from .postprocess import writable_file, write_text_atomic
    for dest in (json_out, csv_out):
        if dest:
            writable_file(dest)
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise CvzooError(f"--batch takes comma-separated integers, got '{batch}'") from None
    if layers < 0:
        raise CvzooError(f"--layers must be >= 0, got {layers}")
    duration = None if iterations else (5.0 if seconds is None else seconds)
    report = bench(model, engine=engine, batches=batches, instances=instances, processes=processes, threads=threads,
                   warmup=warmup, duration=duration, iterations=iterations, size=size,
                   images=images, vs_torch=vs_torch, weights=weights, verify_hashes=_verify_note(verify),
                   progress=lambda m: err_console.print(m, style="dim", markup=False, highlight=False),
                   layers=layers > 0)
    computes = report["results"][0].get("inference_precision")
    table = Table(title=f"{report['model']} ({report['precision']}, {report['engine']}"
                        + (f", computing {computes}" if computes else "") + f") on {report['machine']['cpu']}")
    # --vs-torch ratios: torch eager on a CPU; on a GPU the timm way (eager AMP) and plain torch.compile
    ratios = [(k, head) for k, head in SPEEDUP_HEADS.items() if any(k in r for r in report["results"])]
    for col in ("batch", "inst × proc", "img/s", "mean ms", "p50", "p90", "p99", "max", *(h for _, h in ratios)):
        table.add_column(col, justify="right")
    for r in report["results"]:
        lat = r["latency"]
        table.add_row(str(r["batch"]), f"{r['instances']} × {r['processes']}", f"{r['throughput_ips']:.1f}",
                      f"{lat['mean_ms']:.2f}", f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}", f"{lat['p99_ms']:.2f}",
                      f"{lat['max_ms']:.2f}", *(f"{r[k]:.2f}x" if k in r else "-" for k, _ in ratios))
    console.print(table)
    if "layer_profile" in report:
        print_layer_profile(report["layer_profile"], layers)
    if "end_to_end" in report:
        e = report["end_to_end"]
        for line in e["skipped"]:
            status_line("skipped", line)
        console.print(f"end to end (decode + preprocess + infer): {e['end_to_end_ips']:.1f} img/s; "
                      f"decode + preprocess alone: {e['decode_preprocess_only_ips']:.1f} img/s")
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=2))
    if csv_out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_rows(report))
        write_text_atomic(csv_out, buf.getvalue())


def print_layer_profile(prof: dict, top: int) -> None:
    total = prof["total_ms"]
    table = Table(title=f"the {top} slowest of {len(prof['layers'])} layers at batch {prof['batch']} (mean of "
                        f"{prof['runs']} runs; the engine's profiler adds its own time)")
    for col, justify in (("layer", "left"), ("op", "left"), ("kernel", "left"), ("precision", "left"),
                         ("ms", "right"), ("share", "right")):
        table.add_column(col, justify=justify)
    for layer in sorted(prof["layers"], key=lambda x: -x["ms"])[:top]:
        table.add_row(escape(layer["name"]), layer["op"], layer["kernel"], layer["precision"], f"{layer['ms']:.3f}",
                      f"{100 * layer['ms'] / total:.1f}%")
    console.print(table)
    console.print(f"layer time {total:.2f} ms: " + ", ".join(f"{p} {100 * ms / total:.0f}%"
                                                             for p, ms in prof["by_precision_ms"].items()))


@app.command()
def serve(models: List[str] = typer.Argument(..., help="artifact directories or zoo model names"),
          host: str = typer.Option("127.0.0.1", "--host", help="the address to bind (loopback by default)"),
          port: int = typer.Option(8000, "--port"),
          engine: Optional[str] = _engine_option(),
          instances: int = typer.Option(1, "--instances", "-i", help="engine instances per model, running batches "
                                                                      "concurrently"),
          threads: Optional[int] = typer.Option(None, "--threads", help="per instance (default: cores / instances)"),
          max_batch: int = typer.Option(8, "--max-batch", help="images per engine batch, at most"),
          max_delay_ms: float = typer.Option(2.0, "--max-delay-ms", help="how long a batch waits to fill"),
          max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="larger request bodies are refused (413)"),
          random_init: bool = _random_init_option(),
          verify: bool = _verify_option(),
          ray: Optional[str] = typer.Option(None, "--ray", help="run as a Ray Serve deployment: 'local' starts a "
                                            "local Ray, or a Ray address", show_default=False),
          replicas: int = typer.Option(1, "--replicas", help="with --ray: copies of the app, each with its own "
                                       "instances")):
    """Serve artifacts over HTTP: KServe v2 (tritonclient works), POST /v1/predict, /metrics, a page at /."""
    from .serve import serve as run
    run(models, host=host, port=port, engine=engine, instances=instances, threads=threads, max_batch=max_batch,
        max_delay_ms=max_delay_ms, max_body_mb=max_body_mb, verify_hashes=_verify_note(verify),
        random_init=random_init, ray=ray, replicas=replicas,
        say=lambda m: err_console.print(m, markup=False, highlight=False, soft_wrap=True))


@app.command()
def sweep(models: str = typer.Option(..., "--models", help="comma-separated model names"),
          dtypes: str = typer.Option("fp32,int8", "--dtypes", help="fp32, fp16, bf16, int8 (bf16: --engine openvino)"),
          data: Path = typer.Option(..., "--data", help="labelled evaluation data"),
          calib: Optional[Path] = typer.Option(None, "--calib"),
          count: Optional[int] = typer.Option(None, "--count", help="calibration images (default 300)"),
          calibrate_mode: Optional[str] = typer.Option(None, "--calibrate-mode", help="default robust"),
          weights: Optional[str] = typer.Option("default", "--weights"),
          bench: bool = typer.Option(False, "--bench"),
          bench_seconds: float = typer.Option(2.0, "--bench-seconds", help="with --bench: seconds per batch size"),
          limit: Optional[int] = typer.Option(None, "--limit"),
          engine: str = typer.Option("onnxruntime", "--engine", "-e", help="the engine every artifact is built for "
                                     "(openvino: fp16/bf16 computed in half precision where the CPU has it)"),
          out: Path = typer.Option(Path("sweep-out"), "--out", "-o"),
          ray: Optional[str] = typer.Option(None, "--ray", help="Ray address, or 'local' for a local Ray", show_default=False)):
    """Build, evaluate (and bench) each model x precision; write the zoo table (MD, CSV) and a Pareto plot."""
    from .sweep import sweep as run
    table = run([m for m in models.split(",") if m], [d for d in dtypes.split(",") if d], data, out, calib=calib,
                bench=bench, use_ray=ray is not None, ray_address=None if ray in (None, "local") else ray,
                count=count, calibrate_mode=calibrate_mode, weights=weights, limit=limit, engine=engine,
                bench_seconds=bench_seconds, say=lambda m: console.print(m, markup=False, highlight=False))
    t = Table(title="zoo table")
    for col in ("model", "precision", "engine", "top1", "top5", "Δ vs fp32", "img/s", "params(M)", "GMACs", "input"):
        t.add_column(col, justify="left" if col in ("model", "precision", "engine") else "right")
    for r in table:
        t.add_row(r["model"], r["precision"], r["engine"], str(r["top1"]), str(r["top5"]), str(r["delta_top1_vs_fp32"]),
                  str(r["ips"]), str(r["params_m"]), str(r["gmacs"]), str(r["input_size"]))
    console.print(t)
    console.print(f"wrote {escape(str(out))}/zoo_table.md, zoo_table.csv, pareto.png")


def _usage_errors() -> tuple:
    """Newer typer vendors click (its usage errors derive from typer.TyperException); older typer raises click's."""
    if hasattr(typer, "TyperException"):
        return (typer.TyperException,)
    import click
    return (click.ClickException,)


USAGE_ERRORS = _usage_errors()


class _WarningLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        status_line("warning", record.getMessage())


def _log_warnings_to_stderr() -> None:
    """What the library logs as a warning (e.g. loading a degraded artifact) is one yellow line on stderr."""
    log = logging.getLogger("cvzoo")
    if not any(isinstance(h, _WarningLine) for h in log.handlers):
        log.addHandler(_WarningLine(logging.WARNING))
        log.propagate = False


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2 (4: a build missed its target), no
    traceback."""
    _log_warnings_to_stderr()
    try:
        code = app(args=argv, standalone_mode=False)  # click returns typer.Exit codes in this mode
    except CvzooError as e:
        status_line("error", str(e))
        return getattr(e, "exit_code", 2)
    except (typer.Exit, SystemExit) as e:
        return getattr(e, "exit_code", getattr(e, "code", 0)) or 0
    except typer.Abort:
        return 130
    except USAGE_ERRORS as e:  # unknown option, bad value: click's usage message, exit code 2
        e.show()
        return e.exit_code
    except ModuleNotFoundError as e:  # an optional part this command needs is not installed
        root = (e.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        extra = EXTRAS[root]
        hint = (" (the model side: create, export, build; a built artifact runs without it: cvzoo predict ARTIFACT_DIR)"
                if extra == "models" else "")
        status_line("error", f"this command needs {root}, which is not installed: pip install 'cvzoo[{extra}]'{hint}")
        return 2
    return code if isinstance(code, int) else 0


# the optional modules a command may need -> the extra (pyproject.toml) that installs them
EXTRAS = {**dict.fromkeys(("torch", "torchvision", "timm", "onnx", "onnxslim", "safetensors", "thop",
                           "onnxconverter_common"), "models"),
          "openvino": "openvino", "ray": "ray", "matplotlib": "plot",
          **dict.fromkeys(("fastapi", "uvicorn", "prometheus_client", "multipart", "python_multipart", "starlette"),
                        "serve")}


if __name__ == "__main__":
    sys.exit(main())
