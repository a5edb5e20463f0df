"""`cvzoo build`: fp32 / fp16 / bf16 / int8 engines from a config, with calibration and an accuracy guard.

int8 uses ONNX Runtime static quantization (QDQ by default, so the same artifact feeds ORT, OpenVINO
and TensorRT). The guard measures the quantized model against fp32 on held-out calibration images and,
when it misses the target, keeps the most sensitive nodes in float — the fewest that make it hold.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifact import Artifact, atomic_dir, sha256, versions, write_manifest
from .buildconfig import BuildConfig, QuantizeConfig
from .calibration import ArrayReader, labels_for, load_arrays, select_files, split_holdout
from .card import get_card
from .errors import CvzooError

Say = Callable[[str], None]
CALIBRATION_CACHE = "calibration.cache.json"  # tensor ranges, shared by every requantization of a build
OUTLIER_RATIO = 4.0  # a calibration image whose activations reach this many times the median image's is reported


@dataclass
class Fidelity:
    images: int
    agreement: float  # top-1 agreement with fp32
    max_abs_diff: float
    mean_abs_diff: float
    top1_fp32: Optional[float] = None  # % where labels exist
    top1: Optional[float] = None

    @property
    def top1_drop(self) -> Optional[float]:
        return None if self.top1 is None else self.top1_fp32 - self.top1

    def passes(self, min_agreement: float, max_top1_drop: float) -> bool:
        drop_ok = self.top1_drop is None or self.top1_drop <= max_top1_drop + 1e-9
        return self.agreement >= min_agreement - 1e-9 and drop_ok

    def as_dict(self) -> dict:
        return {**asdict(self), "top1_drop": self.top1_drop}


def measure_fidelity(ref: np.ndarray, got: np.ndarray, labels: Optional[np.ndarray]) -> Fidelity:
    diff = np.abs(ref - got)
    f = Fidelity(images=len(ref), agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
                 max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    if labels is not None:
        f.top1_fp32 = 100.0 * float((ref.argmax(1) == labels).mean())
        f.top1 = 100.0 * float((got.argmax(1) == labels).mean())
    return f


def ort_session(model_path: Path, threads: Optional[int] = None):
    import onnxruntime as ort

    from .engines import physical_cores
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])


def in_batches(run: Callable[[np.ndarray], np.ndarray], arrays: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([run(arrays[i:i + batch]) for i in range(0, len(arrays), batch)])


def model_runner(model_path: Path, engine: str = "onnxruntime") -> Callable[[np.ndarray], np.ndarray]:
    """A batch -> logits function for an ONNX file in the making, run by ONNX Runtime or by OpenVINO (whose int8
    kernels, not ORT's, are what an OpenVINO build's guard and form search must see)."""
    if engine == "openvino":
        from .engines import load_engine
        return load_engine(Artifact(model_path.parent, {"model_file": model_path.name}), "openvino").run
    sess = ort_session(model_path)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def run_logits(model_path: Path, arrays: np.ndarray, batch: int = 16, engine: str = "onnxruntime") -> np.ndarray:
    return in_batches(model_runner(model_path, engine), arrays, batch)


def time_model(model_path: Path, shape: tuple[int, ...], iterations: int = 10, engine: str = "onnxruntime") -> float:
    """time_runner for an ONNX file run by `engine`."""
    return time_runner(model_runner(model_path, engine), shape, iterations)


def time_runner(run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], iterations: int = 10) -> float:
    """Median seconds per run on seeded input: enough to rank int8 forms, or a precision against fp32, here."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    run(x)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ---------------------------------------------------------------- int8
@dataclass(frozen=True)
class Int8Form:
    """One way to write an int8 graph; which is fastest depends on the CPU (VNNI or not) and the engine."""
    format: str  # qdq | qoperator
    reduce_range: bool
    # Q/DQ on the outputs of quantized ops too (ONNX Runtime fuses Conv+Q into QLinearConv), or on their
    # inputs only (as NNCF places them: OpenVINO then fuses the float activation after a conv, e.g. SiLU,
    # instead of dequantizing, activating and requantizing every tensor)
    outputs: bool = True

    @property
    def label(self) -> str:
        return (f"{self.format}{'-reduce_range' if self.reduce_range else ''}"
                f"{'' if self.outputs else '-inputs_only'}")


def calibration_reader(arrays: np.ndarray, input_name: str, q: QuantizeConfig) -> ArrayReader:
    """mean_minmax averages per-batch ranges: batches of one image make that the mean over images."""
    return ArrayReader(arrays, input_name, batch=1 if q.calibrate_mode == "mean_minmax" else 8)


def _quantize(src: Path, dst: Path, reader: ArrayReader, q: QuantizeConfig, form: Int8Form,
              exclude: list[str], cache: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    op_types = list(q.op_types) or ["Conv", "Gemm", "MatMul"]  # [] = ORT's default list; outputs-off needs names
    method = {"minmax": CalibrationMethod.MinMax, "mean_minmax": CalibrationMethod.MinMax,
              "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy, "distribution": CalibrationMethod.Distribution}[q.calibrate_mode]
    reader.rewind()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer logs every node at INFO on the root logger
    try:
        quantize_static(
            str(src), str(dst), reader,
            quant_format=QuantFormat.QDQ if form.format == "qdq" else QuantFormat.QOperator,
            per_channel=q.per_channel, reduce_range=form.reduce_range,
            activation_type=QuantType.QInt8 if q.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=list(exclude),
            op_types_to_quantize=list(q.op_types) or None,  # ORT's own default list when empty
            # ORT's moving-average MinMax averages the per-batch min/max of one pass (see calibration_reader)
            extra_options={"CalibPercentile": q.percentile, "ActivationSymmetric": q.symmetric_activations,
                           "CalibMovingAverage": q.calibrate_mode == "mean_minmax",
                           "WeightSymmetric": True,
                           "OpTypesToExcludeOutputQuantization": [] if form.outputs else list(op_types)},
            calibration_cache_path=str(cache),  # calibrate once, requantize with exclusions cheaply
        )
    finally:
        root.setLevel(level)


def rank_sensitivity(fp32_path: Path, qdq_path: Path, arrays: np.ndarray,
                     op_types: list[str]) -> list[tuple[str, float]]:
    """Quantized nodes, most sensitive first, by isolated sensitivity: for each node, a variant of the
    QDQ graph where only that node reads int8 inputs (everything else is rewired to the float tensors),
    scored by the relative error of the logits against fp32 (int32 biases stay quantized in every variant).
    Graph surgery, no requantization; errors in EfficientNet-like nets accumulate over many layers, so
    per-tensor SQNR ranks them poorly. A variant's proto holds only the nodes it runs (the Q/DQ it no longer
    reads are dropped) and refers to the weights, which every variant's session shares as OrtValues: per node
    one small proto and one session, not a copy, serialization and parse of the whole model (3x faster).
    Upstream of its target a variant computes what the all-float one does, so that one runs once and each
    variant only from its target on, fed those tensors (half the work again)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    suffix = "_DequantizeLinear_Output"
    fm, qm = onnx.load(str(fp32_path)), onnx.load(str(qdq_path))
    float_inits = {i.name: i for i in fm.graph.initializer}
    produced = {o for n in qm.graph.node for o in n.output} | {i.name for i in qm.graph.input}
    float_src = {}  # DequantizeLinear output -> the float tensor it stands for
    for n in qm.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0].endswith(suffix):
            src = n.output[0][: -len(suffix)]
            if src in float_inits or src in produced:
                float_src[n.output[0]] = src
    targets = [n.name for n in qm.graph.node if n.name and (not op_types or n.op_type in op_types)
               and any(i in float_src for i in n.input)]
    have = {i.name for i in qm.graph.initializer}
    float_weights = {s for s in float_src.values() if s in float_inits}
    qm.graph.initializer.extend(float_inits[s] for s in sorted(float_weights - have))
    shared = {}
    for init in qm.graph.initializer:
        if init.ByteSize() > 4096:  # weights; scales and zero points stay in the proto
            shared[init.name] = ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(init))
            for field in ("raw_data", "float_data", "int32_data", "int64_data"):
                init.ClearField(field)
            init.data_location = onnx.TensorProto.EXTERNAL
            init.external_data.add(key="location", value="cvzoo-shared-initializer")
    nodes, inits = list(qm.graph.node), list(qm.graph.initializer)
    del qm.graph.node[:], qm.graph.initializer[:]
    outputs = {o.name for o in qm.graph.output}
    input_name = qm.graph.input[0].name

    def rewired(node, target: Optional[str]):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        if n.name != target:
            for k, i in enumerate(n.input):
                n.input[k] = float_src.get(i, i)
        return n

    def session(live: list, needed: set, graph_inputs: Optional[list] = None, graph_outputs: Optional[list] = None):
        variant = onnx.ModelProto()
        variant.CopyFrom(qm)
        if graph_inputs is not None:
            del variant.graph.input[:]
            variant.graph.input.extend(graph_inputs)
        if graph_outputs:
            variant.graph.output.extend(graph_outputs)
        variant.graph.node.extend(live)
        variant.graph.initializer.extend(i for i in inits if i.name in needed)
        names = [n for n in shared if n in needed]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_external_initializers(names, [shared[n] for n in names])
        return ort.InferenceSession(variant.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])

    def live_nodes(target: Optional[str], cached: set) -> tuple[list, set, set]:
        """The nodes that compute the outputs (graph order is topological: walk back from them), stopping at
        tensors in `cached`; returns them, the tensors they read, and the cached ones among those."""
        live, needed, fed = [], set(outputs), set()
        for node in reversed(nodes):
            if not needed.intersection(node.output):
                continue
            n = rewired(node, target)
            live.append(n)
            for i in n.input:
                if i in cached:
                    fed.add(i)
                else:
                    needed.add(i)
        return list(reversed(live)), needed | fed, fed

    reads: dict[str, list[int]] = {}  # tensor -> the nodes that read it once rewired to float
    for k, n in enumerate(nodes):
        for i in n.input:
            reads.setdefault(float_src.get(i, i), []).append(k)

    def downstream(target: str) -> set:
        """The tensors whose values change when `target` reads int8 inputs."""
        first = next(n for n in nodes if n.name == target).output
        dirty, todo = set(first), list(first)
        while todo:
            for k in reads.get(todo.pop(), []):
                new = set(nodes[k].output) - dirty
                dirty |= new
                todo.extend(new)
        return dirty

    base_live, base_needed, _ = live_nodes(None, set())
    base_tensors = {o for n in base_live for o in n.output} - outputs | {input_name}
    plans = {t: live_nodes(t, base_tensors - downstream(t)) for t in targets}
    # the all-float graph's tensors the variants start from, and only those (held in memory for the ranking
    # images): as graph outputs they stop ONNX Runtime fusing across them; the fewer, the closer its
    # arithmetic stays to the full graph's (bit-identical scores for three of the four fixtures)
    keep = sorted(set().union(*(fed for _, _, fed in plans.values())) - {input_name})
    base = session(base_live, base_needed, graph_outputs=[onnx.helper.make_empty_tensor_value_info(t) for t in keep])
    values = dict(zip([o.name for o in base.get_outputs()], base.run(None, {input_name: arrays})))
    values[input_name] = arrays

    def logits(target: str) -> np.ndarray:
        live, needed, fed = plans[target]
        feeds = {t: values[t] for t in sorted(fed)}
        inputs = [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for t, v in feeds.items()]
        return session(live, needed, inputs).run(None, feeds)[0]

    ref = ort_session(fp32_path).run(None, {fm.graph.input[0].name: arrays})[0]
    scale = float(np.mean(ref ** 2)) or 1.0
    scores = [(t, float(np.mean((logits(t) - ref) ** 2)) / scale) for t in targets]
    return sorted(scores, key=lambda kv: -kv[1])


def calibration_outliers(fp32_path: Path, arrays: np.ndarray, files: list[Path], tensors: list[str],
                         ratio: float = OUTLIER_RATIO, min_share: float = 0.05) -> list[dict]:
    """Calibration images whose activations dwarf the others': per image and tensor the largest |value|, and the
    tensors where it is >= `ratio` x the median image's. Pooled statistics (minmax, percentile, entropy) take
    such a tensor's range from those images and leave every other image a few int8 levels there. Listed: images
    with such values in at least `min_share` of the tensors."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    m = onnx.load(str(fp32_path))
    known = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    names = [t for t in tensors if t in known]
    if not names:
        return []
    del m.graph.output[:]
    for k, t in enumerate(names):
        m.graph.node.extend([helper.make_node("Abs", [t], [f"cvzoo_abs_{k}"]),
                             helper.make_node("ReduceMax", [f"cvzoo_abs_{k}"], [f"cvzoo_absmax_{k}"], keepdims=0)])
        m.graph.output.append(helper.make_tensor_value_info(f"cvzoo_absmax_{k}", onnx.TensorProto.FLOAT, []))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    absmax = np.array([[float(v) for v in sess.run(None, {m.graph.input[0].name: x[None]})] for x in arrays])
    times = absmax / np.maximum(np.median(absmax, axis=0), 1e-12)  # (images, tensors)
    found = [{"file": str(files[i]), "tensors": int((times[i] >= ratio).sum()), "of": len(names),
              "max_times_median": round(float(times[i].max()), 1)} for i in range(len(files))
             if (times[i] >= ratio).sum() >= max(1.0, min_share * len(names))]
    found.sort(key=lambda f: (-f["tensors"], -f["max_times_median"]))
    return found


def outlier_note(outliers: list[dict], mode: str) -> str:
    names = ", ".join(f"{Path(o['file']).name} ({o['tensors']} of {o['of']} tensors, "
                      f"up to {o['max_times_median']:.0f}x)" for o in outliers[:3])
    advice = ("" if mode == "mean_minmax" else f"; {mode} takes those tensors' ranges from them, leaving the other "
              "images few int8 levels there: try --calibrate-mode mean_minmax (each image's range, averaged) or "
              "leave them out")
    return (f"calibration: {len(outliers)} image(s) with activations >= {OUTLIER_RATIO:g}x the median image's: "
            f"{names}{advice}")


@dataclass
class Trial:
    excluded: int
    fidelity: dict
    passed: bool


def guarded_int8(fp32: Path, work: Path, reader: ArrayReader, held: np.ndarray, held_labels, ref_logits,
                 cfg: BuildConfig, form: Int8Form, engine: str,
                 say: Say) -> tuple[Path, list[str], list[Trial], Fidelity]:
    """Quantize; if the guard's target is missed, exclude the fewest most-sensitive nodes that meet it.
    Fidelity is measured with `engine`'s arithmetic (its int8 kernels); nodes are ranked with ONNX Runtime."""
    q, g = cfg.quantize, cfg.guard
    cache = work / CALIBRATION_CACHE

    def attempt(excluded: list[str], tag: str) -> tuple[Path, Fidelity]:
        out = work / f"int8-{form.label}-{tag}.onnx"
        _quantize(fp32, out, reader, q, form, q.exclude + excluded, cache)
        return out, measure_fidelity(ref_logits, run_logits(out, held, engine=engine), held_labels)

    path, fid = attempt([], "x0")
    trials = [Trial(0, fid.as_dict(), fid.passes(g.min_agreement, g.max_top1_drop))]
    say(f"int8 {form.label}: agreement {100 * fid.agreement:.2f}%"
        + (f", top-1 {fid.top1:.2f} vs fp32 {fid.top1_fp32:.2f}" if fid.top1 is not None else "")
        + f", max|Δ| {fid.max_abs_diff:.3f}")
    if trials[0].passed or not g.enabled or g.max_excluded == 0:
        return path, [], trials, fid
    if q.format == "qoperator" or form.format == "qoperator":  # surgery needs the QDQ graph
        _quantize(fp32, work / "rank-qdq.onnx", reader, q, Int8Form("qdq", form.reduce_range, form.outputs),
                  q.exclude, cache)
        rank_src = work / "rank-qdq.onnx"
    else:
        rank_src = path
    ranked = [n for n, _ in rank_sensitivity(fp32, rank_src, held[:16], q.op_types)][: g.max_excluded]
    say(f"guard: below target (agreement >= {100 * g.min_agreement:.1f}%, top-1 drop <= {g.max_top1_drop}); "
        f"searching the fewest of {len(ranked)} most sensitive nodes to keep in float")
    results: dict[int, tuple[Path, Fidelity]] = {0: (path, fid)}

    def try_k(k: int) -> bool:
        if k not in results:
            results[k] = attempt(ranked[:k], f"x{k}")
            f = results[k][1]
            ok = f.passes(g.min_agreement, g.max_top1_drop)
            trials.append(Trial(k, f.as_dict(), ok))
            say(f"guard: {k:3d} nodes in float -> agreement {100 * f.agreement:.2f}%"
                + (f", top-1 drop {f.top1_drop:+.2f}" if f.top1_drop is not None else "") + (" ok" if ok else ""))
        return results[k][1].passes(g.min_agreement, g.max_top1_drop)

    # all of them first: where even that misses (EfficientNetV2 on out-of-distribution photos), the search below
    # would requantize ~7 times (~25 s each for it on 2 cores) to end at the same place
    if not (ranked and try_k(len(ranked))):
        best = max(results, key=lambda n: (results[n][1].agreement, -(results[n][1].top1_drop or 0)))
        say(f"guard: target not reachable with up to {len(ranked)} nodes in float; keeping the best "
            f"({best} excluded)")
        p, f = results[best]
        return p, ranked[:best], trials, f
    lo, hi, k = 0, len(ranked), 1
    while k < hi:  # doubling, then bisection: the fewest exclusions that pass
        if try_k(k):
            hi = k
            break
        lo, k = k, k * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if try_k(mid):
            hi = mid
        else:
            lo = mid
    p, f = results[hi]
    return p, ranked[:hi], trials, f


# ---------------------------------------------------------------- fp16
def to_fp16(src: Path, dst: Path, keep_io_types: bool) -> None:
    import onnx
    from onnxconverter_common import float16
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io_types)
    onnx.save(model, str(dst))


# ---------------------------------------------------------------- build
def build(cfg: BuildConfig, force: bool = False, say: Say = print) -> Path:
    """Validate everything first, then export fp32, convert/quantize, check fidelity, write the artifact."""
    from .checkpoint import resolve_default_weights
    from .export import base_manifest, export

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
    if cfg.dtype == "int8" or (cfg.calibration and cfg.dtype in ("fp16", "bf16")):
        calib_files = select_files(cfg.calibration)
    out = Path(cfg.workspace) / cfg.artifact_name(size)
    if out.exists() and not force:
        raise CvzooError(f"{out}: already exists (use --force to replace it)")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvzoo-build.") as tmp:
        work = Path(tmp)
        say(f"export {card.name} @ {size} fp32 (verified against PyTorch)")
        fp32_dir = export(card, weights=weights, out=work / "fp32", size=size, opset=cfg.opset)
        fp32 = fp32_dir / "model.onnx"
        base = Artifact.load(fp32_dir).manifest
        input_name = base["inputs"][0]["name"]
        extra: dict = {}
        if cfg.dtype == "fp32":
            final = fp32
        elif cfg.dtype in ("fp16", "bf16"):
            final, extra = _build_half(cfg, card, pre, fp32_dir, weights, calib_files, work, say)
        else:
            final, extra = _build_int8(cfg, card, pre, fp32, work, input_name, calib_files, say)
        with atomic_dir(out, force=force) as dst:
            shutil.copyfile(final, dst / "model.onnx")
            shutil.copyfile(fp32_dir / "vdsp_params.json", dst / "vdsp_params.json")
            manifest = base_manifest(card, size, weights, "dynamic")
            manifest.update({
                "model_file": "model.onnx", "engine_format": "onnx", "opset": cfg.opset, "precision": cfg.dtype,
                "engine": cfg.engine, "export": base["export"], **extra.pop("manifest", {}),
                "build": {"config": json.loads(cfg.model_dump_json()), "seconds": round(time.perf_counter() - t0, 1),
                          **extra},
                "versions": versions("cvzoo", "torch", "timm", "onnx", "onnxruntime", "onnxconverter-common",
                                     "openvino"),
            })
            write_manifest(dst, manifest)
    say(f"wrote {out}")
    return out


def _build_half(cfg: BuildConfig, card, pre, fp32_dir: Path, weights: Optional[Path], files: list[Path],
                work: Path, say: Say) -> tuple[Path, dict]:
    """fp16/bf16. For ONNX Runtime, an fp16 ONNX graph (for GPU execution providers: on CPU it computes through
    casts and is not faster). For OpenVINO, the fp32 graph plus the inference precision OpenVINO applies when
    it compiles (the fast path on CPUs with AVX512-FP16 or AMX). For torch-cuda the engine casts the network.
    Fidelity vs fp32 is measured on the calibration images (or the demo photos) with the engine's arithmetic."""
    from .export import demo_images
    fp32 = fp32_dir / "model.onnx"
    arrays = load_arrays(files or demo_images(), pre)[0]
    ref = run_logits(fp32, arrays)
    extra: dict = {}
    if cfg.engine == "openvino":
        from .engines import load_engine
        wanted = {"fp16": "f16", "bf16": "bf16"}[cfg.dtype]
        extra["manifest"] = {"runtime": {"inference_precision": wanted}}
        probe = Artifact(fp32_dir, {**Artifact.load(fp32_dir).manifest, **extra["manifest"], "engine": "openvino"})
        engine = load_engine(probe, "openvino")
        got = in_batches(engine.run, arrays)
        extra["inference_precision_at_build"] = engine.inference_precision
        if engine.inference_precision != wanted:
            say(f"note: this CPU has no {wanted} compute (OpenVINO ran {engine.inference_precision}); the artifact "
                f"asks for {wanted}, and the fidelity below is of {engine.inference_precision}")
        # half precision is not always faster: f16 without AMX-FP16 runs slower than f32 (measured on a
        # Sapphire Rapids-class Xeon: 0.64-0.80x), so the build times both and says so
        shape = (1, 3, pre.input_size, pre.input_size)
        timings = {"fp32": time_model(fp32, shape, engine="openvino"), cfg.dtype: time_runner(engine.run, shape)}
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
    fid = measure_fidelity(ref, got, None)
    extra["fidelity"] = {"vs_fp32": fid.as_dict()}
    say(f"{cfg.dtype}: agreement with fp32 {100 * fid.agreement:.1f}% on {fid.images} images, "
        f"max|Δlogit| {fid.max_abs_diff:.4f}")
    if cfg.guard.enabled and fid.agreement < cfg.guard.min_agreement:
        say(f"warning: {cfg.dtype} top-1 agreement {100 * fid.agreement:.1f}% is below the guard's "
            f"{100 * cfg.guard.min_agreement:.1f}%; check accuracy with `cvzoo eval`, or build fp32")
    return final, extra


def half_slower_note(dtype: str, computes: str, timings: dict, machine: Optional[dict] = None) -> Optional[str]:
    """The build's plain word when an OpenVINO fp16/bf16 artifact runs slower than fp32 on this CPU (b1 timings,
    seconds), with the half precision this CPU does have fast where there is one; None when it is faster."""
    if timings[dtype] <= timings["fp32"] or computes == "f32":  # f32 vs f32 is noise (the build said no half)
        return None
    from .bench import machine_info
    m = machine or machine_info()
    hint = ""
    if dtype == "fp16" and m.get("amx_bf16") and not m.get("amx_fp16"):
        hint = "; this CPU has AMX for bf16 but not for fp16: --dtype bf16 is its fast half precision"
    return (f"note: {dtype} is slower than fp32 with openvino here ({1000 * timings[dtype]:.1f} vs "
            f"{1000 * timings['fp32']:.1f} ms at b1, computing {computes}){hint}; the artifact is kept as asked")


def _build_int8(cfg: BuildConfig, card, pre, fp32: Path, work: Path, input_name: str, files: list[Path],
                say: Say) -> tuple[Path, dict]:
    from onnxruntime.quantization.shape_inference import quant_pre_process
    calib_files, held_files = split_holdout(files, cfg.calibration.holdout)
    calib, calib_used, errs = load_arrays(calib_files, pre)
    held, held_used, errs2 = load_arrays(held_files, pre)
    for e in errs + errs2:
        say(f"warning: calibration image skipped: {e}")
    held_labels = labels_for(held_used, card.synsets)
    say(f"calibration: {len(calib)} images ({cfg.quantize.calibrate_mode}), guard on {len(held)} held-out"
        + (" (labelled)" if held_labels is not None else ""))
    prepped = work / "fp32-prepped.onnx"
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)  # BN folding, shape inference
    reader = calibration_reader(calib, input_name, cfg.quantize)
    ref = run_logits(fp32, held)

    q = cfg.quantize
    engine = "openvino" if cfg.engine == "openvino" else "onnxruntime"  # whose int8 kernels the guard measures
    first = Int8Form(q.format if q.format != "auto" else "qdq", bool(q.reduce_range), q.quantize_outputs is not False)
    path, excluded, trials, fid = guarded_int8(prepped, work, reader, held, held_labels, ref, cfg, first, engine, say)
    outliers = []
    if cfg.guard.enabled and not trials[0].passed:  # int8 missed the target: do a few images set the ranges?
        tensors = list(json.loads((work / CALIBRATION_CACHE).read_text())["data"])
        outliers = calibration_outliers(prepped, calib, calib_used, tensors)
        if outliers:
            say(outlier_note(outliers, q.calibrate_mode))
    chosen, timings = first, {}
    candidates = []
    if q.format == "auto" and engine == "openvino":  # OpenVINO reads QDQ only; where the Q/DQ sit matters
        say("int8 forms for openvino: QDQ (QOperator is ONNX Runtime's own), Q/DQ placement measured")
        candidates = [Int8Form("qdq", first.reduce_range, o) for o in (True, False) if q.quantize_outputs in (None, o)]
    elif q.format == "auto" and cfg.engine == "onnxruntime":
        formats = ("qdq", "qoperator") if first.outputs else ("qdq",)  # QOperator always quantizes outputs
        candidates = [Int8Form(f, r, first.outputs) for f in formats for r in (False, True)]
    elif q.format == "auto":
        say(f"int8 form: qdq (the form {cfg.engine} reads; QOperator is ONNX Runtime's own)")
    if candidates:
        # the fastest correct form on this CPU, timed with the build's engine: candidates share the guard's
        # exclusions and must pass it too
        shape = (1, 3, pre.input_size, pre.input_size)
        timings["fp32"] = time_model(fp32, shape, engine=engine)
        timings[chosen.label] = time_model(path, shape, engine=engine)
        cache = work / CALIBRATION_CACHE
        best = (timings[chosen.label], chosen, path, fid)
        for form in candidates:
            if form == chosen:
                continue
            p = work / f"int8-{form.label}.onnx"
            _quantize(prepped, p, reader, q, form, q.exclude + excluded, cache)
            f = measure_fidelity(ref, run_logits(p, held, engine=engine), held_labels)
            timings[form.label] = time_model(p, shape, engine=engine)
            passed = f.passes(cfg.guard.min_agreement, cfg.guard.max_top1_drop) or not cfg.guard.enabled
            say(f"int8 form {form.label}: {1000 * timings[form.label]:.1f} ms/img (b1), agreement "
                f"{100 * f.agreement:.2f}%" + ("" if passed else " (fails guard)"))
            if passed and timings[form.label] < best[0]:
                best = (timings[form.label], form, p, f)
        _, chosen, path, fid = best
        say(f"int8 form chosen: {chosen.label} ({1000 * timings[chosen.label]:.1f} ms vs fp32 "
            f"{1000 * timings['fp32']:.1f} ms at b1, {engine})")
        if timings[chosen.label] > timings["fp32"]:
            from .bench import machine_info
            m = machine_info()
            why = (f"{len(excluded)} nodes kept in float add Q/DQ conversions" if excluded else "")
            if not (m["avx512_vnni"] or m["avx_vnni"]):
                why = "this CPU has no VNNI int8 dot product" + (f"; {why}" if why else "")
            say(f"note: int8 is slower than fp32 with {engine} here ({why or 'small model'}); the artifact still "
                f"stores 8-bit weights" + (" and its QDQ form feeds OpenVINO/TensorRT" if chosen.format == "qdq" else ""))
    say(f"int8 final: agreement {100 * fid.agreement:.2f}%"
        + (f", top-1 {fid.top1:.2f} (fp32 {fid.top1_fp32:.2f})" if fid.top1 is not None else "")
        + (f"; {len(excluded)} nodes kept in float: {', '.join(excluded[:8])}{' ...' if len(excluded) > 8 else ''}"
           if excluded else ""))
    extra = {
        "quantization": {**cfg.quantize.model_dump(), "form": chosen.label, "format_chosen": chosen.format,
                         "reduce_range_chosen": chosen.reduce_range, "quantize_outputs_chosen": chosen.outputs,
                         "measured_with": engine, "excluded_nodes": excluded,
                         "form_timings_b1_s": timings},
        "calibration": {"path": str(cfg.calibration.path), "count": len(calib_used), "seed": cfg.calibration.seed,
                        "files": [{"path": str(p), "sha256": sha256(p)} for p in calib_used]},
        "guard": {**cfg.guard.model_dump(), "held_out": [str(p) for p in held_used], "labelled": held_labels is not None,
                  "calibration_outliers": outliers,
                  "before": trials[0].fidelity, "after": fid.as_dict(),
                  "trials": [asdict(t) for t in trials], "passed": fid.passes(cfg.guard.min_agreement,
                                                                             cfg.guard.max_top1_drop)},
        "fidelity": {"vs_fp32": fid.as_dict()},
    }
    return path, extra
