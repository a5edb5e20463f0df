"""Issue 5: sweep over two fixtures x {fp32, int8}: table, CSV, Pareto PNG; cached jobs; the same on Ray."""
import csv
import json

import pytest

from cvzoo.sweep import sweep
from tests.conftest import IMAGENETTE_VAL, need

MODELS = ["dla34-imagenette", "ese_vovnet19b_dw-imagenette"]


def _check(out, table):
    assert [(r["model"], r["precision"], r["engine"]) for r in table] == [(m, d, "onnxruntime") for m in MODELS
                                                                          for d in ("fp32", "int8")]
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
@pytest.mark.xdist_group("local_sweep")
def test_sweep_local_then_cached(local_sweep):
    out, table, args = local_sweep
    kw = {k: v for k, v in args.items() if k != "models"}
    assert args["models"] == MODELS
    _check(out, table)
    said = []
    again = sweep(MODELS, ["fp32", "int8"], IMAGENETTE_VAL, out, say=said.append, **kw)
    assert again == table and all(s.startswith("skip") for s in said) and len(said) == 4


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
@pytest.mark.xdist_group("server")  # one local Ray at a time: the Ray Serve test is in test_serve's group too
def test_sweep_on_local_ray(tmp_path):
    """The same jobs dispatched to Ray workers (fp32 only: an int8 job is the same run_job, tested above)."""
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    said = []
    table = sweep(MODELS, ["fp32"], need(IMAGENETTE_VAL), out, limit=100, use_ray=True, say=said.append)
    import ray
    ray.shutdown()
    assert [(r["model"], r["precision"], r["engine"]) for r in table] == [(m, "fp32", "onnxruntime") for m in MODELS]
    jobs = [json.loads(p.read_text()) for p in sorted((out / "jobs").iterdir())]
    assert [j["images"] for j in jobs] == [100, 100] and all(r["top1"] > 60 for r in table)
    assert sum("done (ray)" in s for s in said) == 2
    assert (out / "zoo_table.csv").exists() and (out / "pareto.png").exists()


def test_sweep_bad_arguments(tmp_path):
    from cvzoo.errors import CvzooError
    with pytest.raises(CvzooError, match="unknown model"):
        sweep(["nope"], ["fp32"], tmp_path, tmp_path / "o")
    with pytest.raises(CvzooError, match="unknown precision 'int4'"):
        sweep(["dla34"], ["int4"], tmp_path, tmp_path / "o")
    # refused before any job runs, not after the fp32 ones
    with pytest.raises(CvzooError, match="sweep bf16 on onnxruntime: dtype bf16 needs engine openvino"):
        sweep(["dla34"], ["fp32", "bf16"], tmp_path, tmp_path / "o")
    with pytest.raises(CvzooError, match="sweep int8 on onnxruntime: dtype int8 needs a calibration set"):
        sweep(["dla34"], ["fp32", "int8"], tmp_path, tmp_path / "o")
    assert not (tmp_path / "o" / "jobs").exists()


@pytest.mark.shared
def test_sweep_builds_for_openvino_half_precision(tmp_path):
    """--engine openvino: the fp32 and bf16 rows are OpenVINO artifacts, keyed apart from onnxruntime ones."""
    pytest.importorskip("openvino")
    out = tmp_path / "ov"
    table = sweep(["dla34-imagenette"], ["fp32", "bf16"], need(IMAGENETTE_VAL), out, limit=100, engine="openvino",
                  say=print)
    assert [(r["precision"], r["engine"]) for r in table] == [("fp32", "openvino"), ("bf16", "openvino")]
    assert sorted(p.name for p in (out / "jobs").iterdir()) == ["dla34-imagenette-bf16-openvino.json",
                                                              "dla34-imagenette-fp32-openvino.json"]
    assert all(r["top1"] > 60 for r in table) and abs(table[1]["delta_top1_vs_fp32"]) <= 2.0
    assert "| bf16 | openvino |" in (out / "zoo_table.md").read_text()
