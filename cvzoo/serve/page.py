"""The web page at `/`: pick a model, drop or choose an image, see the top-5 with bars and the latency. One
self-contained document (no CDN): it posts the image to /v1/predict."""
from __future__ import annotations

from html import escape

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cvzoo serve</title><link rel="icon" href="data:,"><style>
body{font:15px/1.45 system-ui,sans-serif;max-width:760px;margin:32px auto;padding:0 12px;color:#222}
#drop{border:2px dashed #999;border-radius:8px;padding:28px;text-align:center;margin:12px 0;cursor:pointer}
#drop.over{background:#eef4ff;border-color:#4a78c2}#preview{max-height:220px;display:none;margin:8px 0}
.row{display:flex;align-items:center;gap:8px;margin:3px 0}.name{width:280px;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}.bar{height:14px;background:#4a78c2;border-radius:3px}.err{color:#c62828}.muted{color:#777}
</style></head><body>
<h1>cvzoo serve</h1>
<label>model <select id="model">__OPTIONS__</select></label>
<div id="drop">drop an image here, or <input type="file" id="file" accept="image/*"></div>
<img id="preview" alt="">
<div id="result" aria-live="polite"></div>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('file');
const result = document.getElementById('result'), preview = document.getElementById('preview');
function esc(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
async function send(file) {
  preview.src = URL.createObjectURL(file); preview.style.display = 'block';
  result.innerHTML = '<p class="muted">running...</p>';
  const form = new FormData();
  form.append('model', document.getElementById('model').value); form.append('file', file);
  const t0 = performance.now();
  try {
    const r = await fetch('/v1/predict', {method: 'POST', body: form});
    const body = await r.json(), ms = performance.now() - t0;
    const p = body.predictions ? body.predictions[0] : null;
    if (!r.ok || !p || p.error) { result.innerHTML = '<p class="err">' + esc(body.error || p.error) + '</p>'; return; }
    result.innerHTML = '<p>top-1: <b id="top1">' + esc(p.topk[0].name) + '</b></p>' + p.topk.map(t =>
      '<div class="row"><span class="name" title="' + esc(t.name) + '">' + esc(t.name) + '</span>' +
      '<span class="bar" style="width:' + Math.max(1, 300 * t.prob) + 'px"></span>' +
      '<span>' + (100 * t.prob).toFixed(1) + '%</span></div>').join('') +
      '<p class="muted" id="latency">server ' + body.latency_ms.toFixed(1) + ' ms, round trip ' + ms.toFixed(1) + ' ms</p>';
  } catch (e) { result.innerHTML = '<p class="err">' + esc(String(e)) + '</p>'; }
}
input.addEventListener('change', () => input.files[0] && send(input.files[0]));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
</script></body></html>
"""


def render(models: list[str]) -> str:
    options = "".join(f'<option value="{escape(m)}">{escape(m)}</option>' for m in models)
    return PAGE.replace("__OPTIONS__", options)
