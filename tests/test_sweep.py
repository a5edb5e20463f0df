"""Issue 5: sweep over two fixtures x {fp32, int8}: table, CSV, Pareto PNG; cached jobs; the same on Ray."""
import csv

import pytest

from cvzoo.sweep import sweep
from tests.conftest import IMAGENET_SAMPLE, IMAGENETTE_VAL, need

MODELS = ["cspresnet50-imagenette", "dla34-imagenette"]


def _check(out, table):
    assert [(r["model"], r["precision"]) for r in table] == [(m, d) for m in MODELS for d in ("fp32", "int8")]
    for r in table:
        assert r["top1"] > 60 and r["params_m"] > 1 and r["gmacs"] > 0 and r["ips"] > 0
        assert r["delta_top1_vs_fp32"] == (0 if r["precision"] == "fp32" else round(r["top1"] - next(
            x["top1"] for x in table if x["model"] == r["model"] and x["precision"] == "fp32"), 3))
    rows = list(csv.DictReader((out / "zoo_table.csv").open()))
    assert len(rows) == 4 and rows[0]["model"] == MODELS[0]
    assert (out / "zoo_table.md").read_text().count("\n") == 6
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.shared
@pytest.mark.slow
def test_sweep_local_then_cached(tmp_path):
    out = tmp_path / "sweep"
    kw = dict(calib=need(IMAGENET_SAMPLE), count=40, limit=200, bench=True)
    table = sweep(MODELS, ["fp32", "int8"], need(IMAGENETTE_VAL), out, say=print, **kw)
    _check(out, table)
    said = []
    again = sweep(MODELS, ["fp32", "int8"], IMAGENETTE_VAL, out, say=said.append, **kw)
    assert again == table and all(s.startswith("skip") for s in said) and len(said) == 4


@pytest.mark.shared
@pytest.mark.slow
def test_sweep_on_local_ray(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    table = sweep(MODELS, ["fp32", "int8"], need(IMAGENETTE_VAL), out, calib=need(IMAGENET_SAMPLE), count=40,
                  limit=200, use_ray=True, say=print)
    _check(out, table)
    import ray
    ray.shutdown()


def test_sweep_bad_arguments(tmp_path):
    from cvzoo.errors import CvzooError
    with pytest.raises(CvzooError, match="unknown model"):
        sweep(["nope"], ["fp32"], tmp_path, tmp_path / "o")
    with pytest.raises(CvzooError, match="unknown precision 'int4'"):
        sweep(["dla34"], ["int4"], tmp_path, tmp_path / "o")
