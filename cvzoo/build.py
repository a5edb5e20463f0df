"""`cvzoo build`: fp32 / fp16 / bf16 / int8 engines from a config, with calibration and an accuracy guard.

int8 (the `quantize` package) uses ONNX Runtime static quantization (QDQ by default, so the same artifact feeds ORT,
OpenVINO and TensorRT). The guard measures the quantized model against fp32 on held-out images; a build that misses
its target writes nothing unless asked to (then the artifact is marked degraded).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from .artifact import Artifact, atomic_dir, sha256, versions, write_manifest
from .buildconfig import BuildConfig
from .calibration import labels_for, load_arrays, select_files, select_split
from .card import get_card
from .errors import CvzooError, Say, TargetMissed
from .postprocess import writable_folder
from .runners import in_batches, model_runner, run_logits, time_runners


# ---------------------------------------------------------------- fp16
def to_fp16(src: Path, dst: Path, keep_io_types: bool) -> None:
    import onnx
    from onnxconverter_common import float16
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io_types)
    onnx.save(model, str(dst))


# ---------------------------------------------------------------- build
def build(cfg: BuildConfig, force: bool = False, say: Say = print) -> Path:
    """Validate everything first, then export fp32 (or reuse the cached export), convert/quantize, check fidelity,
    write the artifact. An int8 build that misses the guard's target raises TargetMissed and writes nothing, unless
    guard.accept_degraded (then the artifact says so)."""
    from .checkpoint import resolve_default_weights
    from .export import base_manifest, cached_export

    card = get_card(cfg.model)
    size = cfg.input_size or card.input_size
    weights = None
    if cfg.weights == "default":
        weights = resolve_default_weights(card)
    elif cfg.weights:
        weights = Path(cfg.weights)
        if not weights.is_file():
            raise CvzooError(f"{weights}: weights file not found")
    pre = card.preprocessing.at_size(size)
    calib_files: list[Path] = []
    held_files: list[Path] = []
    if cfg.dtype == "int8":
        calib_files, held_files = select_split(cfg.calibration, say)
    elif cfg.calibration and cfg.dtype in ("fp16", "bf16"):
        calib_files = select_files(cfg.calibration, say=say)
    out = Path(cfg.workspace) / cfg.artifact_name(size)
    if out.exists() and not force:
        raise CvzooError(f"{out}: already exists (use --force to replace it)")
    writable_folder(out.parent)  # before the work, not after it

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvzoo-build.") as tmp:
        work = Path(tmp)
        if cfg.fp32 is not None:
            fp32_art, weights = _given_fp32(cfg, card, size)
            say(f"fp32 {card.name} @ {size}: {fp32_art.folder} (its files match its manifest)")
        else:
            say(f"fp32 {card.name} @ {size}: exported and verified against PyTorch (cached; "
                f"{'random init' if weights is None else weights.name})")
            fp32_art = cached_export(card, weights, size, cfg.opset)
        fp32_dir, base = fp32_art.folder, fp32_art.manifest
        fp32 = fp32_dir / base.model_file
        extra: dict = {}
        if cfg.dtype == "fp32":
            final = fp32
        elif cfg.dtype in ("fp16", "bf16"):
            final, extra = _build_half(cfg, card, pre, fp32_dir, weights, calib_files, work, say)
        else:
            final, extra = _build_int8(cfg, card, pre, fp32, work, calib_files, held_files, say)
        with atomic_dir(out, force=force) as dst:
            shutil.copyfile(final, dst / "model.onnx")
            shutil.copyfile(fp32_dir / "vdsp_params.json", dst / "vdsp_params.json")
            manifest = base_manifest(card, size, None, "dynamic")
            manifest.update({"weights": base.weights.model_dump(exclude_none=True),
                "model_file": "model.onnx", "engine_format": "onnx", "opset": cfg.opset, "precision": cfg.dtype,
                "engine": cfg.engine, "export": base.export.model_dump(), **extra.pop("manifest", {}),
                "build": {"config": json.loads(cfg.model_dump_json()), "seconds": round(time.perf_counter() - t0, 1),
                          **extra},
                "versions": versions("cvzoo", "torch", "timm", "onnx", "onnxruntime", "onnxconverter-common",
                                     "openvino"),
            })
            if cfg.dtype == "int8":  # the page to look at, hashed with the rest
                from .manifest import Manifest
                from .report import build_report
                (dst / "report.html").write_text(build_report(Manifest.model_validate(manifest)), encoding="utf-8")
            written = write_manifest(dst, manifest)
    say(f"wrote {out}" + (" (marked degraded)" if written.degraded else "")
        + (f"; report: {out / 'report.html'}" if "report.html" in written.files else ""))
    return out


def _given_fp32(cfg: BuildConfig, card, size: int) -> tuple[Artifact, Optional[Path]]:
    """An fp32 export to build from (cfg.fp32), refused unless it is what the config describes; and its
    checkpoint where that file is still here (the torch-cuda bf16 build rebuilds the network from it)."""
    folder = Path(cfg.fp32)
    src = Artifact.load(folder, verify_hashes=True)
    found = (src.precision, src.name, src.preprocessing.input_size, src.manifest.opset, src.manifest.io.inputs[0].shape[0])
    wanted = ("fp32", card.name, size, cfg.opset, "batch")
    if found != wanted:
        raise CvzooError(f"{folder}: not an fp32 export of {card.name} at {size} px, opset {cfg.opset}, dynamic batch "
                         f"(it is {src.precision} {src.name} at {found[2]} px, opset {found[3]}, batch {found[4]})")
    recorded = src.manifest.weights.path
    return src, (Path(recorded) if recorded and Path(recorded).is_file() else None)


def _build_half(cfg: BuildConfig, card, pre, fp32_dir: Path, weights: Optional[Path], files: list[Path],
                work: Path, say: Say) -> tuple[Path, dict]:
    """fp16/bf16. For ONNX Runtime, an fp16 ONNX graph (for GPU execution providers: on CPU it computes through
    casts and is not faster). For OpenVINO, the fp32 graph plus the inference precision OpenVINO applies when
    it compiles (the fast path on CPUs with AVX512-FP16 or AMX). For torch-cuda the engine casts the network.
    Fidelity vs fp32 is measured on the calibration images (or the demo photos) with the engine's arithmetic."""
    from .datasets import demo_images
    fp32 = fp32_dir / "model.onnx"
    arrays = load_arrays(files or demo_images(), pre)[0]
    ref = run_logits(fp32, arrays)
    extra: dict = {}
    if cfg.engine == "openvino":
        from .engines import RuntimeSpec, load_engine
        wanted = {"fp16": "f16", "bf16": "bf16"}[cfg.dtype]
        extra["manifest"] = {"runtime": {"inference_precision": wanted}}
        engine = load_engine(RuntimeSpec(fp32, inference_precision=wanted, built_for="openvino"), "openvino")
        got = in_batches(engine.run, arrays)
        extra["inference_precision_at_build"] = engine.inference_precision
        if engine.inference_precision != wanted:
            say(f"note: this CPU has no {wanted} compute (OpenVINO ran {engine.inference_precision}); the artifact "
                f"asks for {wanted}, and the fidelity below is of {engine.inference_precision}")
        # half precision is not always faster: f16 without AMX-FP16 runs slower than f32 (measured on a
        # Sapphire Rapids-class Xeon: 0.64-0.80x), so the build times both and says so
        shape = (1, 3, pre.input_size, pre.input_size)
        timings = time_runners({"fp32": model_runner(fp32, "openvino"), cfg.dtype: engine.run}, shape)
        extra["timings_b1_s"] = timings
        slower = half_slower_note(cfg.dtype, engine.inference_precision, timings)
        if slower:
            say(slower)
        final = fp32
    elif cfg.engine == "torch-cuda" and cfg.dtype == "bf16":
        import torch

        from .export import source_model
        model = source_model(card, weights, pre.input_size).to(torch.bfloat16)
        with torch.inference_mode():  # bf16 arithmetic on the CPU: the GPU's rounding, not its kernels
            got = in_batches(lambda x: model(torch.from_numpy(x).to(torch.bfloat16)).float().numpy(), arrays)
        final = fp32
    else:
        final = work / "model-fp16.onnx"
        to_fp16(fp32, final, cfg.keep_io_types)
        got = run_logits(final, arrays)
        if cfg.engine == "onnxruntime":
            extra["note"] = ("fp16 ONNX is for GPU engines; on CPU, ONNX Runtime computes most fp16 ops through "
                             "casts and it is not faster than fp32 (build with engine openvino for a fast CPU fp16)")
    from .quantize import measure_fidelity
    fid = measure_fidelity(ref, got, None)
    extra["fidelity"] = {"vs_fp32": fid.as_dict()}
    say(f"{cfg.dtype}: agreement with fp32 {100 * fid.agreement:.1f}% on {fid.images} images, "
        f"max|Δlogit| {fid.max_abs_diff:.4f}")
    if cfg.guard.enabled and not fid.passes(cfg.guard.max_top1_drop, cfg.guard.min_agreement):
        say(f"warning: {cfg.dtype} misses the guard's target ({fid.summary()}); check accuracy with `cvzoo eval`, "
            "or build fp32")
    return final, extra


def half_slower_note(dtype: str, computes: str, timings: dict, machine: Optional[dict] = None) -> Optional[str]:
    """The build's plain word when an OpenVINO fp16/bf16 artifact runs slower than fp32 on this CPU (b1 timings,
    seconds), with the half precision this CPU does have fast where there is one; None when it is faster."""
    if timings[dtype] <= timings["fp32"] or computes == "f32":  # f32 vs f32 is noise (the build said no half)
        return None
    from .machine import machine_info
    m = machine or machine_info()
    hint = ""
    if dtype == "fp16" and m.get("amx_bf16") and not m.get("amx_fp16"):
        hint = "; this CPU has AMX for bf16 but not for fp16: --dtype bf16 is its fast half precision"
    return (f"note: {dtype} is slower than fp32 with openvino here ({1000 * timings[dtype]:.1f} vs "
            f"{1000 * timings['fp32']:.1f} ms at b1, computing {computes}){hint}; the artifact is kept as asked")


def _build_int8(cfg: BuildConfig, card, pre, fp32: Path, work: Path, calib_files: list[Path],
                held_files: list[Path], say: Say) -> tuple[Path, dict]:
    from .quantize import manifest_sections, quantize_int8
    calib, calib_used, errs = load_arrays(calib_files, pre)
    held, held_used, errs2 = load_arrays(held_files, pre)
    for e in errs + errs2:
        say(f"warning: calibration image skipped: {e}")
    held_labels = labels_for(held_used, card.synsets)
    say(f"calibration: {len(calib)} images ({cfg.quantize.calibrate_mode} ranges); guard on {len(held)} held-out "
        + ("labelled images (top-1 drop measured)" if held_labels is not None else
           "images without labels of this model (top-1 drop expected from fp32's probabilities)"))
    engine = "openvino" if cfg.engine == "openvino" else "onnxruntime"  # whose int8 kernels the guard measures
    r = quantize_int8(fp32, work, calib, calib_used, held, held_labels, cfg, engine, say, held_used)
    extra = manifest_sections(r, cfg, engine)
    extra["calibration"] = {"path": str(cfg.calibration.path), "count": len(calib_used), "seed": cfg.calibration.seed,
                            "files": [{"path": str(p), "sha256": sha256(p)} for p in calib_used]}
    extra["guard"]["held_out"] = [str(p) for p in held_used]
    if r.passed is False:
        g = cfg.guard
        done = [s["step"].replace("_", " ") for s in r.steps if s["kept"]]
        line = (f"int8 misses the guard's target: {r.fidelity.summary()}, allowed "
                f"{r.fidelity.tolerance(g.max_top1_drop):.2f}" + (f", after {', '.join(done)}" if done else "")
                + (f" and {len(r.excluded)} nodes in float" if r.excluded else ""))
        if not g.accept_degraded:
            raise TargetMissed(f"{line}; no artifact written. Try in-domain or more calibration images (--calib, "
                               "--count), --calibrate-mode mean_minmax, a larger --max-top1-drop, or --accept-degraded "
                               "to write it marked degraded")
        say(f"warning: {line}; written as asked (--accept-degraded), marked degraded")
        extra["manifest"] = {"degraded": line}
    return r.path, extra
