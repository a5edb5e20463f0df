"""The int8 search: quantize everything, then recover accuracy cheapest first, and keep the fastest form that meets
the guard's target on the held-out images.

Order: (1) every Conv/Gemm/MatMul in int8 with robust ranges; (2) recovery steps that keep every node in int8
(full-range s8 weights where 7-bit is the reference, the other range aggregate, Q/DQ on conv inputs only,
cross-layer equalization, bias correction, u8 weights), each kept only if it lowers the held-out KL; (3) only
then the fewest most sensitive nodes in float. Steps run only while the target is missed. Every candidate form of
the final plan is then checked and timed on the target engine, and the fastest that passes is kept. The steps
measure the form the engine is likely to run fastest (on OpenVINO, Q/DQ on conv inputs only), so that what they
recover is not given back in speed."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..buildconfig import BuildConfig
from ..errors import Say
from ..machine import has_vnni, machine_info
from ..runners import Runner, compiled_runner, in_batches, model_runner, time_runners
from .forms import PER_IMAGE_MODES, Int8Form, calibrated_ops, candidates, quantize
from .graph import classifier, input_conv_weights
from .guard import Fidelity, fit_temperature, measure_fidelity, one_image_points
from .recovery import bias_correction, equalizable_pairs, equalize
from .sensitivity import layer_sqnr, rank_sensitivity
from .stats import OUTLIER_RATIO, ImageRanges, image_ranges, outlier_note

RANKING_IMAGES = 32  # held-out images the node ranking runs on (one small graph per node)
LAYER_ERROR_IMAGES = 16  # held-out images the per-layer error of the report is measured on
# forms whose cost is within this of the fastest are taken as equally fast (timing noise on a shared CPU; 7-bit and
# full-range s8 weights run the same instructions), and the one closest to fp32 of them is chosen
SPEED_TIE = 0.05
# unlabelled held-out images beyond the calibrated ranges are set apart only while they are this few: in-domain
# efficientnetv2_rw_t photos had 9% of them, and their loss was real (docs/quantization.md)
MAX_BEYOND_SHARE = 0.05


@dataclass(frozen=True)
class Plan:
    """What the quantizer is given: a float graph (equalized / bias-corrected or not) and how its ranges are set."""
    float_model: Path
    ranges: str
    weights: tuple[str, ...]  # the weight forms to time: ("s8", "s7") or ("u8",), the first the reference
    outputs: Optional[bool] = None  # Q/DQ placement: None = the engine's forms, False = on conv inputs only
    equalized: bool = False
    bias_corrected: bool = False
    uncorrected: Optional[Path] = None  # the float graph before bias correction, to correct again for new weights
    s7_weights: tuple[str, ...] = ()  # weight tensors kept in 7 bits where the form's weights are s8

    def describe(self) -> dict:
        return {"ranges": self.ranges, "weights": list(self.weights), "outputs": self.outputs,
                "equalized": self.equalized, "bias_corrected": self.bias_corrected,
                "s7_weights": list(self.s7_weights)}


@dataclass
class Attempt:
    path: Path
    form: Int8Form
    fidelity: Fidelity
    int8_layers: tuple[int, int] = (0, 0)  # (conv/matmul layers the engine computes in int8, all of them)
    run: Optional[Runner] = field(default=None, repr=False, compare=False)  # the engine's session it was measured with

    def runs_less_int8_than(self, other: "Attempt") -> bool:
        return self.int8_layers[0] < other.int8_layers[0]


@dataclass
class Int8Build:
    path: Path
    form: Int8Form
    plan: Plan
    excluded: list[str]
    float_head: Optional[str]
    fidelity: Fidelity
    before: Fidelity
    passed: Optional[bool]  # None: guard off, nothing judged
    steps: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    form_timings_b1_s: dict = field(default_factory=dict)
    form_timings_b8_s: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)  # fp32 and the chosen form at b1 and b8
    outliers: list[dict] = field(default_factory=list)
    beyond_ranges: list[dict] = field(default_factory=list)  # held-out images set apart by the guard
    int8_layers: tuple[int, int] = (0, 0)  # of the chosen form, as the engine compiled it
    layer_sqnr: list[dict] = field(default_factory=list)  # accumulated error per layer, for the report

    @property
    def speedup(self) -> dict:
        t = self.timings_s
        return {b: round(t[f"fp32_{b}"] / t[f"int8_{b}"], 3) for b in ("b1", "b8") if f"int8_{b}" in t}


def fastest_then_closest(attempts: Sequence[Attempt], cost: dict[str, float]) -> Attempt:
    """The fastest form; of those within SPEED_TIE of it, the one closest to fp32 on the held-out images (lowest KL)."""
    fastest = min(cost[a.form.label] for a in attempts)
    return min((a for a in attempts if cost[a.form.label] <= fastest * (1 + SPEED_TIE)), key=lambda a: a.fidelity.kl)


def weight_family(pinned: str, target_cpu: str, engine: str = "onnxruntime") -> tuple[str, ...]:
    """auto: with VNNI, s8 only (7-bit weights run the same dot-product instruction there and only lose precision,
    so timing them would pick between equals by noise). Without VNNI, 7-bit first (the reference), since full-range
    s8 can saturate the kernels there; the first recovery step measures s8, and the end checks and times both.
    For another CPU without VNNI (target_cpu no_vnni on a VNNI machine) s8 is not offered: it cannot be checked here."""
    if pinned != "auto":
        return (pinned,)
    if not has_vnni(engine=engine):
        return ("s7", "s8")
    return ("s7",) if target_cpu == "no_vnni" else ("s8",)


def quantize_int8(fp32: Path, work: Path, calib: np.ndarray, calib_files: Sequence[Path], held: np.ndarray,
                  held_labels: Optional[np.ndarray], cfg: BuildConfig, engine: str, say: Say,
                  held_files: Optional[Sequence[Path]] = None) -> Int8Build:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..calibration import ArrayReader
    q, g = cfg.quantize, cfg.guard
    one_image = one_image_points(len(held))
    if g.enabled and one_image > g.max_top1_drop + 1e-9:
        enough = (f"{int(np.ceil(100.0 / g.max_top1_drop - 1e-9))} held-out images resolve the target (--holdout, "
                  "or a larger calibration folder)" if g.max_top1_drop > 0 else "no number of images resolves a 0 target")
        say(f"warning: guard on {len(held)} held-out images: one image is {one_image:.2f} points of top-1, coarser "
            f"than the {g.max_top1_drop:g}-point target, so that is the finest drop it can hold; {enough}")
    prepped = work / "fp32-prepped.onnx"
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)  # BN folding, shape inference
    model = onnx.load(str(prepped))
    input_name, head = model.graph.input[0].name, classifier(model)
    keep_float = list(q.exclude) + ([head] if head else [])
    stats: dict[Path, ImageRanges] = {prepped: image_ranges(prepped, calib, calibrated_ops(q.op_types))}
    outliers = stats[prepped].outliers(calib_files)
    if outliers:
        say(outlier_note(outliers, q.calibrate_mode))
    # the fp32 reference logits come from the held-out ranges' pass (the same network, BN folded: one pass, not two)
    held_stats = image_ranges(prepped, held, calibrated_ops(q.op_types), outputs=True)
    ref = held_stats.outputs
    judged, beyond = _judged(stats[prepped], held_stats, held_files or [f"held-out image {i}" for i in range(len(held))],
                             held_labels is not None, say)
    temperature = fit_temperature(ref[judged], held_labels[judged]) if held_labels is not None else 1.0
    reader = ArrayReader(calib, input_name)
    ids = itertools.count()

    def ranges_cache(plan: Plan) -> Path:
        cache = work / f"ranges-{plan.float_model.stem}-{plan.ranges}.json"
        if plan.ranges in PER_IMAGE_MODES and not cache.exists():
            from .stats import write_ort_cache
            if plan.float_model not in stats:
                stats[plan.float_model] = image_ranges(plan.float_model, calib, calibrated_ops(q.op_types))
            s = stats[plan.float_model]
            write_ort_cache(cache, s.tensors, *s.ranges(plan.ranges))
        return cache  # for ORT's own calibrators: written by quantize() on first use

    def write(plan: Plan, form: Int8Form, exclude: Sequence[str] = ()) -> Path:
        out = work / f"int8-{next(ids)}-{form.label}.onnx"
        quantize(plan.float_model, out, form, keep_float + list(exclude), q.op_types, q.per_channel,
                 q.symmetric_activations, ranges_cache(plan), reader, plan.ranges, q.percentile, plan.s7_weights)
        return out

    def qdq_graph(plan: Plan, form: Int8Form, written: Optional[Path] = None, exclude: Sequence[str] = ()) -> Path:
        """`plan` in `form` as a QDQ graph that still holds every float op (bias correction, the node ranking and the
        layer error rebuild the float network from it); `written`: that graph already written in `form`."""
        if written is not None and form.format == "qdq" and not (form.outputs and form.fuse_activations):
            return written
        return write(plan, replace(form, format="qdq", fuse_activations=False), exclude)

    def realize(plan: Plan, form: Int8Form, exclude: Sequence[str] = ()) -> Attempt:
        out = write(plan, form, exclude)
        run, layers = compiled_runner(out, engine)
        return Attempt(out, form, measure_fidelity(ref, in_batches(run, held), held_labels, temperature, judged),
                       layers, run)

    def ok(f: Fidelity) -> bool:
        return f.passes(g.max_top1_drop, g.min_agreement)

    plan = Plan(prepped, q.calibrate_mode, weight_family(q.weights, q.target_cpu, engine), q.quantize_outputs)
    first = candidates(engine, q.format, plan.weights[:1], plan.outputs)[0]
    current = realize(plan, first)
    before = current.fidelity
    say(f"int8 {first.label}, every {'/'.join(q.op_types) or 'quantizable'} node but the classifier: "
        f"{before.summary()}")
    steps: list[dict] = []
    if g.enabled and not ok(current.fidelity):
        say(f"guard: target is a drop <= {current.fidelity.tolerance(g.max_top1_drop):.2f}; recovery steps, each kept "
            "only if it lowers the held-out KL")
        for step in q.recovery:
            trial = _step(step, plan, current, work, calib, q, qdq_graph)
            if trial is None:
                continue
            new_plan, note = trial
            form = candidates(engine, q.format, new_plan.weights[:1], new_plan.outputs)[0]
            attempt = realize(new_plan, form)
            # a step that makes the engine compute layers in float is a way back to fp32, not a recovery
            floats = attempt.runs_less_int8_than(current)
            kept = attempt.fidelity.kl < current.fidelity.kl and not floats
            if floats:
                note += (f"; {engine} computes only {attempt.int8_layers[0]} of {attempt.int8_layers[1]} layers of it "
                         f"in int8 (was {current.int8_layers[0]})")
            steps.append({"step": step, "kept": kept, "note": note, "fidelity": attempt.fidelity.as_dict(),
                          "int8_layers": list(attempt.int8_layers)})
            say(f"recovery {step} ({note}): {attempt.fidelity.summary()} -> {'kept' if kept else 'dropped'}")
            if kept:
                plan, current = new_plan, attempt
            if ok(current.fidelity):
                break

    excluded: list[str] = []
    trials: list[dict] = []
    if g.enabled and not ok(current.fidelity) and g.max_excluded > 0:
        current, excluded, trials = _exclusion_search(plan, current, realize, qdq_graph, ok, held[judged], q, g, say)

    passed = ok(current.fidelity) if g.enabled else None
    # the fastest form that passes (each one measured like the first), on the engine the artifact is for
    shape = (1, *held.shape[1:])
    attempts = {current.form.label: current}
    for form in candidates(engine, q.format, plan.weights, plan.outputs):
        if form.label not in attempts:
            attempts[form.label] = realize(plan, form, excluded)
    runners = {"fp32": model_runner(fp32, engine),  # each form timed with the session it was measured with
               **{k: a.run or model_runner(a.path, engine) for k, a in attempts.items()}}
    t1 = time_runners(runners, shape)
    t8 = time_runners(runners, (8, *shape[1:]), rounds=3)
    # a form fast at b1 can be slow at b8 (ORT's QOperator form): per-image times of both, geometric mean
    cost = {k: float(np.sqrt(t1[k] * t8[k] / 8)) for k in runners}
    most_int8 = max(a.int8_layers[0] for a in attempts.values())  # a form the engine runs partly in float is not offered
    eligible = [a for a in attempts.values() if a.int8_layers[0] == most_int8
                and (not g.enabled or not passed or ok(a.fidelity))]
    if g.enabled and not passed:  # nothing passes: the most accurate, for the report (and --accept-degraded)
        chosen = min(eligible, key=lambda a: (a.fidelity.expected_drop, a.fidelity.kl))
    else:
        chosen = fastest_then_closest(eligible, cost)
    for k, a in attempts.items():
        say(f"int8 form {k}: {1000 * t1[k]:.2f} / {1000 * t8[k]:.2f} ms at b1 / b8 ({engine}), {a.int8_layers[0]} of "
            f"{a.int8_layers[1]} layers in int8, {a.fidelity.summary()}"
            + ("" if not g.enabled or ok(a.fidelity) else " (misses the target)"))
    final = {"fp32_b1": t1["fp32"], "int8_b1": t1[chosen.form.label], "fp32_b8": t8["fp32"],
             "int8_b8": t8[chosen.form.label]}
    result = Int8Build(chosen.path, chosen.form, plan, excluded, head, chosen.fidelity, before, passed, steps, trials,
                       {k: round(v, 6) for k, v in t1.items()}, {k: round(v, 6) for k, v in t8.items()},
                       {k: round(v, 6) for k, v in final.items()}, outliers, beyond, chosen.int8_layers,
                       layer_sqnr(plan.float_model, qdq_graph(plan, chosen.form, chosen.path, excluded),
                                  held[judged][:LAYER_ERROR_IMAGES], q.op_types))
    n8, n = chosen.int8_layers
    stem = f" ({len(plan.s7_weights)} stem conv(s) 7-bit)" if plan.s7_weights and chosen.form.weights == "s8" else ""
    say(f"int8 chosen: {chosen.form.label}{stem}, {result.speedup['b1']:.2f}x fp32 at b1 and "
        f"{result.speedup['b8']:.2f}x at b8 ({engine}); {engine} computes {n8} of {n} conv/matmul layers in int8; "
        f"{chosen.fidelity.summary()}"
        + (f"; {len(excluded)} nodes in float: {', '.join(excluded[:6])}{' ...' if len(excluded) > 6 else ''}"
           if excluded else "; every node quantized but the classifier"))
    if n and n8 < n / 2:
        say(f"note: {engine} computes most layers of this graph in float ({n - n8} of {n}): the Q/DQ pairs it does not "
            "fuse into int8 kernels only round the values (a form pinned by the config?)")
    if result.speedup["b1"] < 1.0:
        why = f"{len(excluded)} nodes kept in float add conversions" if excluded else ""
        if not has_vnni(engine=engine) or q.target_cpu == "no_vnni":
            why = "this CPU has no VNNI int8 dot product" + (f"; {why}" if why else "")
        say(f"note: int8 is slower than fp32 with {engine} here ({why or 'small model'}); the artifact still stores "
            "8-bit weights" + (" and its QDQ form feeds OpenVINO/TensorRT" if chosen.form.format == "qdq" else ""))
    return result


def _judged(calib: ImageRanges, held: ImageRanges, files: Sequence, labelled: bool,
            say: Say) -> tuple[np.ndarray, list[dict]]:
    """The held-out images the guard judges (a mask), and those it sets apart: beyond the calibrated ranges by the
    rule that names calibration outliers, where the held-out photos are not labelled photos of the model's classes
    (those are its domain: all judged) and such images are few."""
    judged = np.ones(len(files), bool)
    beyond = calib.beyond_median(held, files)
    if not beyond:
        return judged, []
    names = ", ".join(f"{Path(o['file']).name} (up to {o['max_times_median']:.0f}x)" for o in beyond[:3])
    why = ("they are labelled photos of the model's classes" if labelled else
           f"more than {100 * MAX_BEYOND_SHARE:g}% of the held-out set, which the calibration photos do not describe"
           if len(beyond) > MAX_BEYOND_SHARE * len(files) else None)
    if why:
        say(f"guard: {len(beyond)} of {len(files)} held-out images reach >= {OUTLIER_RATIO:g}x the median calibration "
            f"image's activations ({names}); every image is judged: {why}")
        return judged, []
    judged[[o["index"] for o in beyond]] = False
    say(f"guard: {len(beyond)} held-out image(s) reach >= {OUTLIER_RATIO:g}x the median calibration image's "
        f"activations ({names}): int8 clips them by design; measured and reported apart, not judged")
    return judged, beyond


def _step(step: str, plan: Plan, current: Attempt, work: Path, calib: np.ndarray, q,
          qdq_graph: Callable[..., Path]) -> Optional[tuple[Plan, str]]:
    """The plan with one recovery step applied, and a word on what it did; None where it does not apply."""
    import onnx
    if step in ("weights_s8", "weights_s8_after_stem"):
        if plan.weights[0] != "s7" or "s8" not in plan.weights:
            return None  # s8 is the reference already (VNNI), or it is not offered (pinned, target_cpu no_vnni)
        s8 = replace(plan, weights=("s8", *[w for w in plan.weights if w != "s8"]))
        if step == "weights_s8":
            return s8, "full-range s8 weights: whether this engine's kernels saturate them without VNNI is measured"
        stem = input_conv_weights(onnx.load(str(plan.float_model)))
        if not stem:
            return None
        return (replace(s8, s7_weights=tuple(stem)),
                f"s8 weights but in the {len(stem)} conv(s) reading the image, kept 7-bit: their u8 inputs span the "
                "whole range, where two 8-bit products can overflow a 16-bit sum")
    if step == "ranges":
        if plan.ranges not in ("robust", "mean_minmax"):
            return replace(plan, ranges="robust"), f"robust instead of {plan.ranges}"
        other = "mean_minmax" if plan.ranges == "robust" else "robust"
        return replace(plan, ranges=other), f"{other} instead of {plan.ranges}"
    if step == "placement":
        if plan.outputs is False or q.quantize_outputs is not None or not current.form.outputs:
            return None  # already there, pinned, or the engine's reference form (OpenVINO's) is inputs-only
        return replace(plan, outputs=False), "Q/DQ on conv inputs only, conv outputs stay float up to the next conv"
    if step == "equalization":
        if plan.equalized or not equalizable_pairs(onnx.load(str(plan.float_model))):
            return None
        out = work / f"{plan.float_model.stem}-eq.onnx"
        pairs = equalize(plan.float_model, out)
        return replace(plan, float_model=out, equalized=True), f"{pairs} conv pairs"
    if step == "bias_correction":
        if plan.bias_corrected:
            return None
        out = work / f"{plan.float_model.stem}-bc.onnx"
        n = bias_correction(plan.float_model, qdq_graph(plan, current.form, current.path), calib, out)
        return replace(plan, float_model=out, bias_corrected=True, uncorrected=plan.float_model), f"{n} biases"
    if step == "weights_u8":
        if plan.weights == ("u8",) or q.weights != "auto":
            return None
        u8 = replace(plan, weights=("u8",))
        if not plan.bias_corrected:
            return u8, "asymmetric u8 weights, a u8 x u8 kernel"
        # the corrections answer the old weights' rounding errors: fitted again to u8's, from the uncorrected graph
        u8 = replace(u8, float_model=plan.uncorrected, bias_corrected=False, uncorrected=None)
        out = work / f"{plan.uncorrected.stem}-u8-bc.onnx"
        n = bias_correction(u8.float_model, qdq_graph(u8, replace(current.form, weights="u8")), calib, out)
        return (replace(u8, float_model=out, bias_corrected=True, uncorrected=u8.float_model),
                f"asymmetric u8 weights, a u8 x u8 kernel; {n} biases corrected again for them")
    raise ValueError(f"unknown recovery step {step}")


def _exclusion_search(plan: Plan, current: Attempt, realize, qdq_graph, ok, held: np.ndarray, q, g,
                      say: Say) -> tuple[Attempt, list[str], list[dict]]:
    """The fewest most sensitive nodes in float that meet the target: all of max_excluded first (where even that
    misses, the search would requantize ~7 times to end at the same place), then doubling and bisection."""
    qdq = qdq_graph(plan, current.form, current.path)  # the ranking's graph surgery needs the QDQ graph
    ranked = [n for n, _ in rank_sensitivity(plan.float_model, qdq, held[:RANKING_IMAGES], q.op_types)]
    ranked = ranked[: g.max_excluded]
    say(f"guard: still below target; searching the fewest of the {len(ranked)} most sensitive nodes to keep in float")
    results: dict[int, Attempt] = {0: current}
    trials: list[dict] = []

    def try_k(k: int) -> bool:
        if k not in results:
            results[k] = realize(plan, current.form, ranked[:k])
            passed = ok(results[k].fidelity)
            if not passed:  # a session is kept only for what may be timed at the end: one that passes
                results[k].run = None
            trials.append({"excluded": k, "passed": passed, "fidelity": results[k].fidelity.as_dict()})
            say(f"guard: {k:3d} nodes in float -> {results[k].fidelity.summary()}{' ok' if passed else ''}")
        return ok(results[k].fidelity)

    if not (ranked and try_k(len(ranked))):
        best = min(results, key=lambda k: (results[k].fidelity.expected_drop, results[k].fidelity.kl))
        return results[best], ranked[:best], trials
    lo, hi, k = 0, len(ranked), 1
    while k < hi:
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
    return results[hi], ranked[:hi], trials


def manifest_sections(r: Int8Build, cfg: BuildConfig, engine: str) -> dict:
    """The build's int8 record: what was quantized and how, what the guard measured, what each step did."""
    q = cfg.quantize
    return {
        "quantization": {**q.model_dump(), "form": r.form.label, "format_chosen": r.form.format,
                         "weights_chosen": r.form.weights, "quantize_outputs_chosen": r.form.outputs,
                         "measured_with": engine, "plan": r.plan.describe(), "excluded_nodes": r.excluded,
                         "float_head": r.float_head, "steps": r.steps, "form_timings_b1_s": r.form_timings_b1_s,
                         "int8_layers_at_runtime": {"int8": r.int8_layers[0], "all": r.int8_layers[1]},
                         "form_timings_b8_s": r.form_timings_b8_s, "layer_sqnr_db": r.layer_sqnr,
                         "timings_s": r.timings_s, "speedup_vs_fp32": r.speedup, "machine": machine_info()},
        "guard": {**cfg.guard.model_dump(), "labelled": r.fidelity.labelled, "calibration_outliers": r.outliers,
                  "held_out_beyond_ranges": r.beyond_ranges,
                  "tolerance": r.fidelity.tolerance(cfg.guard.max_top1_drop),
                  "before": r.before.as_dict(), "after": r.fidelity.as_dict(), "trials": r.trials, "passed": r.passed},
        "fidelity": {"vs_fp32": r.fidelity.as_dict()},
    }

