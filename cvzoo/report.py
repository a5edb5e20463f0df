"""Self-contained HTML pages to look at: an int8 build's report.html (in the artifact) and a sweep's index.html.
No network, no CDN: styles inline, plots as inline SVG, photos as data URIs; a few lines of script sort tables."""
from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .manifest import FidelityRecord, Manifest

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}th.sort{cursor:pointer}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}.muted{color:#777}
figure{display:inline-block;margin:6px;text-align:center;font-size:12px}figure img{display:block;border:1px solid #ccc}
"""
SORT_SCRIPT = """
for (const th of document.querySelectorAll('th.sort')) th.addEventListener('click', () => {
  const table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const key = r => { const t = r.cells[i].dataset.v ?? r.cells[i].textContent; const x = parseFloat(t);
                     return isNaN(x) ? t : x; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(r => body.appendChild(r));
});
"""


def page(title: str, body: str, sortable: bool = False) -> str:
    script = f"<script>{SORT_SCRIPT}</script>" if sortable else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><link rel="icon" href="data:,">'
            f"<style>{STYLE}</style></head><body>{body}{script}</body></html>\n")


def table(header: Sequence[str], rows: Iterable[Sequence[object]], sortable: bool = False, cls: str = "") -> str:
    th = "".join(f'<th{" class=sort" if sortable else ""}>{escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    head = f"<thead><tr>{th}</tr></thead>" if header else ""
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _cell(v: object) -> str:
    if v is None:
        return '<td class="muted">-</td>'
    if isinstance(v, bool):
        return f'<td class="{"ok" if v else "bad"}">{"yes" if v else "no"}</td>'
    if isinstance(v, (int, float)):
        return f'<td class="n" data-v="{v}">{v:.4g}</td>' if isinstance(v, float) else f'<td class="n">{v}</td>'
    return f"<td>{escape(str(v))}</td>"


def bar_chart(items: Sequence[tuple[str, float]], unit: str, width: int = 640, highlight: Optional[str] = None) -> str:
    """Horizontal bars as inline SVG, one per (label, value); values <= 0 or None drawn as empty."""
    if not items:
        return '<p class="muted">nothing to plot</p>'
    row, label_w = 16, min(260, 7 * max(len(k) for k, _ in items) + 10)
    top = max((v for _, v in items if v), default=1.0) or 1.0
    plot_w = width - label_w - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 6}" role="img">']
    for i, (k, v) in enumerate(items):
        y = i * row + 3
        w = 0 if not v or v <= 0 else max(1.0, plot_w * v / top)
        color = "#c62828" if k == highlight else "#4a78c2"
        parts.append(f'<text x="{label_w - 6}" y="{y + 11}" font-size="11" text-anchor="end">{escape(k[-40:])}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row - 4}" fill="{color}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 11}" font-size="11">'
                     f'{"-" if v is None else f"{v:.3g}"} {escape(unit)}</text>')
    return "".join(parts) + "</svg>"


def thumbnail(path: Path, size: int = 112) -> Optional[str]:
    """A photo as a small JPEG data URI; None where it cannot be read any more."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _photo_figures(photos: Sequence[dict]) -> str:
    """Thumbnails of the photos a build named, with how far their activations went (the first 12)."""
    figs = []
    for o in photos[:12]:
        uri = thumbnail(Path(o["file"]))
        img = f'<img src="{uri}" alt="">' if uri else '<span class="muted">(not readable here)</span>'
        figs.append(f"<figure>{img}<figcaption>{escape(Path(o['file']).name)}<br>{o['tensors']} of {o['of']} "
                    f"tensors, up to {o['max_times_median']:.0f}x</figcaption></figure>")
    return "".join(figs)


def _fidelity_rows(name: str, f: Optional[FidelityRecord]) -> list:
    if f is None:
        return []
    ci = f.expected_ci95
    return [[name, f.images, round(100 * f.agreement, 2), f.expected_drop,
             f"{ci[0]:+.2f} .. {ci[1]:+.2f}" if ci else None, f.top1_drop, f.kl, f.max_abs_diff]]


def build_report(m: Manifest) -> str:
    """report.html of an int8 build: what the guard measured and did, each step's effect, the int8 forms' timings,
    the error per layer and the calibration photos that stood out."""
    b = m.build
    q, g = b.quantization, b.guard
    n8 = q.int8_layers_at_runtime
    verdict = ("guard off" if g.passed is None else ("meets its target" if g.passed else "MISSES its target"))
    cls = "muted" if g.passed is None else ("ok" if g.passed else "bad")
    parts = [f"<h1>{escape(m.name)} int8 build report</h1>",
             f'<p><span class="{cls}" id="verdict">{escape(verdict)}</span>: top-1 drop allowed '
             f"{g.tolerance if g.tolerance is not None else g.max_top1_drop:.2f} points on {len(g.held_out)} held-out "
             f"images ({'labelled' if g.labelled else 'no labels: expected from fp32 probabilities'}). "
             f"Form <b>{escape(q.form)}</b> for {escape(q.measured_with)}; "
             + (f"{n8.int8} of {n8.all} conv/matmul layers computed in int8; " if n8 else "")
             + f"speed-up vs fp32 {', '.join(f'{k} {v:.2f}x' for k, v in q.speedup_vs_fp32.items())}.</p>"]
    if m.degraded:
        parts.append(f'<p class="bad">Degraded (written with --accept-degraded): {escape(m.degraded)}</p>')
    parts.append("<h2>fp32 vs int8 on the held-out images</h2>")
    parts.append(table(["", "images", "agreement %", "expected drop", "95% CI", "measured drop", "KL", "max |Δlogit|"],
                       _fidelity_rows("first int8 graph", g.before) + _fidelity_rows("artifact", g.after)))
    parts.append("<h2>What the guard did</h2>")
    if q.steps:
        parts.append(table(["step", "kept", "note", "expected drop", "KL", "int8 layers"],
                           [[s["step"], s["kept"], s.get("note"), s["fidelity"].get("expected_drop"),
                             s["fidelity"].get("kl"), "/".join(map(str, s.get("int8_layers", [])))] for s in q.steps]))
    else:
        parts.append("<p>No recovery step was needed" + ("" if g.passed is not None else " (guard off)") + ".</p>")
    if q.excluded_nodes:
        parts.append(f"<p>{len(q.excluded_nodes)} node(s) kept in float: {escape(', '.join(q.excluded_nodes))}</p>")
    parts.append(f"<p class=muted>Plan: {escape(str(q.plan))}; calibration {escape(q.calibrate_mode)} ranges on "
                 f"{b.calibration.count if b.calibration else '?'} images.</p>")
    parts.append("<h2>Timing of each int8 form (b1, ms)</h2>")
    parts.append(bar_chart([(k, 1000 * v) for k, v in q.form_timings_b1_s.items()], "ms", highlight=q.form))
    if q.layer_sqnr_db:
        parts.append("<h2>Error per layer</h2><p>SQNR of each quantized layer's output against fp32 (dB, higher is "
                     "better), accumulated from the input; a sharp fall marks where the error enters.</p>")
        parts.append(bar_chart([(e.node, e.sqnr_db) for e in q.layer_sqnr_db], "dB"))
    parts.append("<h2>Calibration photos that stood out</h2>")
    if g.calibration_outliers:
        parts.append("<p>Activations far above the median image's; robust ranges weigh each as one image.</p>"
                     + _photo_figures(g.calibration_outliers))
    else:
        parts.append("<p>None: no photo's activations stood far above the others'.</p>")
    if g.held_out_beyond_ranges:
        parts.append("<h2>Held-out photos set apart</h2><p>Activations far beyond the calibrated ranges (against the "
                     "median calibration photo): int8 clips them by design, so the guard measured them apart "
                     f"(expected drop {g.after.beyond_expected_drop:+.2f} on them) and did not judge them.</p>"
                     + _photo_figures(g.held_out_beyond_ranges))
    parts.append(f"<p class=muted>cvzoo {escape(m.versions.get('cvzoo', '?'))}, built {escape(m.created or '')} on "
                 f"{escape(str(q.machine.get('cpu', '?')))}</p>")
    return page(f"{m.name} int8 report", "".join(parts))


def _manifest_of(artifact: Optional[str]) -> Optional[Manifest]:
    try:
        return Manifest.model_validate_json((Path(artifact) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None


def sweep_report(zoo: Sequence[dict], rows: Sequence[dict], pareto_svg: Optional[str]) -> str:
    """index.html of a sweep: the zoo table (click a header to sort), the accuracy-vs-speed plot, and per model x
    precision its preprocessing, accuracy, speed-up over fp32 and build settings."""
    fp32_ips = {r["model"]: r["ips"] for r in zoo if r["precision"] == "fp32" and r.get("ips")}
    header = ["model", "precision", "engine", "top1", "top5", "Δtop1 vs fp32", "images/s", "speed-up vs fp32",
              "params (M)", "GMACs", "input"]
    body = [[r["model"], r["precision"], r["engine"], r["top1"], r["top5"], r["delta_top1_vs_fp32"], r["ips"],
             round(r["ips"] / fp32_ips[r["model"]], 2) if r.get("ips") and r["model"] in fp32_ips else None,
             r["params_m"], r["gmacs"], r["input_size"]] for r in zoo]
    parts = ["<h1>cvzoo sweep</h1>", f"<p>{len(zoo)} jobs. Click a column header to sort.</p>",
             table(header, body, sortable=True, cls="zoo")]
    if pareto_svg:
        parts += ["<h2>Accuracy vs throughput</h2>", pareto_svg[pareto_svg.find("<svg"):]]
    parts.append("<h2>Each model and precision</h2>")
    artifacts = {(r["model"], r["precision"], r.get("engine", "onnxruntime")): r.get("artifact") for r in rows}
    for r in zoo:
        m = _manifest_of(artifacts.get((r["model"], r["precision"], r["engine"])))
        parts.append(f"<h3>{escape(r['model'])} {escape(r['precision'])} ({escape(r['engine'])})</h3>")
        if m is None:
            parts.append('<p class="muted">artifact not found</p>')
            continue
        p = m.preprocessing
        facts = [["preprocessing", f"resize {p.resize_size} ({p.interpolation}), crop {p.input_size}, mean "
                  f"{list(p.mean)}, std {list(p.std)}"],
                 ["weights", m.weights.path or "random init"], ["accuracy", f"top-1 {r['top1']}, top-5 {r['top5']}"]]
        if m.build and m.build.quantization:
            q, g = m.build.quantization, m.build.guard
            n8 = q.int8_layers_at_runtime
            facts += [["int8", f"{q.form}, {q.calibrate_mode} ranges, " + (f"{n8.int8}/{n8.all} layers int8, " if n8
                                                                          else "") + f"{len(q.excluded_nodes)} in float"],
                      ["build speed-up", ", ".join(f"{k} {v:.2f}x" for k, v in q.speedup_vs_fp32.items())],
                      ["guard", "off" if g.passed is None else ("passed" if g.passed else "missed")]]
        if m.build:
            skip = {"workspace", "name"} | (set() if m.precision == "int8" else {"quantize", "calibration", "guard"})
            facts.append(["build settings", ", ".join(f"{k}={v}" for k, v in m.build.config.items()
                                                      if v not in (None, {}, []) and k not in skip)])
        parts.append(table([], facts))
    return page("cvzoo sweep", "".join(parts), sortable=True)

