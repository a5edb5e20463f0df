"""`cvzoo serve` as a user runs it: a real server process on the loopback address, spoken to by standard clients
(tritonclient's HTTP client, httpx, a headless browser); bad input, engine faults, SIGTERM and a modified artifact."""
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.xdist_group("server")  # the module's server fixture, started once

from cvzoo.datasets import demo_images  # noqa: E402
from cvzoo.engines import load_engine  # noqa: E402
from cvzoo.predict import Predictor  # noqa: E402
from cvzoo.preprocess import preprocess_image  # noqa: E402
from tests.conftest import open_page  # noqa: E402

LITE0 = "tf_efficientnet_lite0"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, log=None):
        """`log`: a file for the server's output (Ray's logs could fill a pipe nobody reads while it runs)."""
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = open(log, "w") if log else subprocess.PIPE
        self.proc = subprocess.Popen([sys.executable, "-m", "cvzoo", "serve", *map(str, args), "--port", str(self.port)],
                                     stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: "
                                   f"{Path(log).read_text() if log else self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="session")  # not module: xdist may run other modules' tests in between, and a restart is 10 s
def server(artifacts):
    s = Server(artifacts(LITE0), "--instances", "2", "--max-batch", "8", "--max-delay-ms", "20", "--max-body-mb", "4")
    yield s
    assert s.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown


def _pixels(files):
    from cvzoo.card import get_card
    return np.stack([preprocess_image(f, get_card(LITE0).preprocessing) for f in files]).astype(np.float32)


def test_tritonclient_speaks_to_it(server, artifacts):
    import tritonclient.http as tc
    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(LITE0)
    meta = client.get_model_metadata(LITE0)
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    config = client.get_model_config(LITE0)  # Triton's model configuration, as perf_analyzer reads it
    assert config["max_batch_size"] == 8 and config["instance_group"] == [{"count": 2}]
    assert [(i["name"], i["dims"], i["optional"]) for i in config["input"]] == [("input", [3, 224, 224], True),
                                                                                 ("image", [1], True)]
    files = demo_images()[:3]
    x = _pixels(files)
    want = load_engine(artifacts(LITE0)).run(x)
    for binary, n in ((True, 3), (False, 1)):  # the binary tensor extension (tritonclient's default), plain JSON
        inp = tc.InferInput("input", [n, *x.shape[1:]], "FP32")
        inp.set_data_from_numpy(x[:n], binary_data=binary)
        res = client.infer(LITE0, [inp], outputs=[tc.InferRequestedOutput("logits", binary_data=binary)])
        np.testing.assert_allclose(res.as_numpy("logits"), want[:n], atol=1e-4)
    # encoded images in, classification out: decoded and preprocessed exactly as `predict` does
    img = tc.InferInput("image", [len(files), 1], "BYTES")  # the metadata's shape; [N] is read too
    img.set_data_from_numpy(np.array([[f.read_bytes()] for f in files], dtype=np.object_))
    res = client.infer(LITE0, [img], outputs=[tc.InferRequestedOutput("probabilities", class_count=5)])
    top = res.as_numpy("probabilities")
    flat = tc.InferInput("image", [len(files)], "BYTES")
    flat.set_data_from_numpy(np.array([f.read_bytes() for f in files], dtype=np.object_))
    np.testing.assert_array_equal(client.infer(LITE0, [flat], outputs=[tc.InferRequestedOutput(
        "probabilities", class_count=5)]).as_numpy("probabilities"), top)
    pred = Predictor(artifacts(LITE0))
    for f, row in zip(files, top):
        p = pred.predict(f)
        value, index, label = row[0].decode().split(":", 2)
        assert int(index) == p.ids[0] and label == p.names[0] and abs(float(value) - p.probs[0]) < 1e-4


def test_v1_predict_matches_predict(server, artifacts):
    files = demo_images()
    r = httpx.post(server.url + "/v1/predict", files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files],
                   data={"topk": "3"}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = list(Predictor(artifacts(LITE0)).predict_paths(files, topk=3))
    assert [g["path"] for g in got] == [f.name for f in files]
    for g, w in zip(got, want):
        assert [t["id"] for t in g["topk"]] == w.ids and [t["name"] for t in g["topk"]] == w.names
        assert np.allclose([t["prob"] for t in g["topk"]], w.probs, atol=1e-5)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header announcing a huge image (a decompression bomb's signature) in a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _v2(url, body: bytes, model=LITE0, headers=None):
    return httpx.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers or {}, timeout=60)


def _v2_json(shape, datatype="FP32", data=None):
    return json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                                   "data": data if data is not None else [0] * int(np.prod(shape))}]}).encode()


def _v2_with(**fields):
    """A good JSON tensor request with these top-level fields added."""
    return json.dumps({**json.loads(_v2_json([1, 3, 224, 224])), **fields}).encode()


def _v2_binary(x: np.ndarray, size=None):
    """_v2's body and headers: one FP32 tensor in Triton's binary format, as tritonclient sends it (JSON has no
    NaN); `size`, the binary_data_size to announce instead of the tensor's."""
    x = x.astype(np.float32)
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
    return {"body": head + x.tobytes(),
            "headers": {"Inference-Header-Content-Length": str(len(head))}}


def _upload(url, name, data):
    return httpx.post(url + "/v1/predict", files=[("file", (name, data, "image/jpeg"))], timeout=60)


def test_bad_input_is_a_4xx_naming_the_problem_and_the_server_goes_on(server):
    photo = demo_images()[0].read_bytes()
    cases = {
        "not an image": (lambda: _upload(server.url, "a.jpg", b"hello, not a picture"), 400, "not an image"),
        "truncated": (lambda: _upload(server.url, "t.jpg", photo[:len(photo) // 3]), 400, "truncated"),
        "empty": (lambda: _upload(server.url, "e.jpg", b""), 400, "empty"),
        "bomb": (lambda: _upload(server.url, "b.png", _png_claiming(30000, 30000)), 400, "decompression-bomb"),
        "over --max-body-mb": (lambda: _upload(server.url, "big.jpg", b"\xff" * (5 << 20)), 413, "max-body-mb"),
        "v2 over --max-body-mb": (lambda: _v2(server.url, b"\0" * (5 << 20)), 413, "max-body-mb"),
        "v2 over --max-body-mb, chunked": (lambda: _v2(server.url, iter([b"\0" * (1 << 20)] * 5)), 413, "max-body-mb"),
        "wrong shape": (lambda: _v2(server.url, _v2_json([1, 3, 100, 100])), 400, "expected [N, 3, 224, 224]"),
        "wrong dtype": (lambda: _v2(server.url, _v2_json([1, 3, 224, 224], "INT32")), 400, "expected FP32"),
        "malformed JSON": (lambda: _v2(server.url, b"{not json"), 400, "malformed JSON"),
        "JSON with NaN": (lambda: _v2(server.url, _v2_json([1, 3, 224, 224]).replace(b"[0,", b"[NaN,", 1)), 400,
                          "malformed JSON"),
        "unknown model": (lambda: _v2(server.url, _v2_json([1, 3, 224, 224]), model="nope"), 404, "unknown model"),
        "unknown output": (lambda: _v2(server.url, _v2_with(outputs=[{"name": "nope"}])), 400, "unknown output"),
        "outputs not a list": (lambda: _v2(server.url, _v2_with(outputs="logits")), 400, "'outputs' must be a list"),
        # was a 500 (AttributeError)
        "parameters not an object": (lambda: _v2(server.url, _v2_with(parameters=3)), 400,
                                     "the request: 'parameters' must be a JSON object, got int"),
        "unknown input": (lambda: _v2(server.url, _v2_json([1, 3, 224, 224]).replace(b'"input"', b'"zzz"')), 400,
                          "unknown input 'zzz'"),  # was answered as if it were 'input'
        "unknown version": (lambda: _v2(server.url, _v2_json([1, 3, 224, 224]), model=f"{LITE0}/versions/7"), 404,
                            "has no version '7'"),
        # these five were 500s (ValueError, TypeError)
        "binary_data_size not an integer": (lambda: _v2(server.url, **_v2_binary(np.zeros((1, 3, 224, 224)),
                                                                                 size="lots")), 400,
                                            "binary_data_size must be a non-negative integer, got 'lots'"),
        "datatype not a string": (lambda: _v2(server.url, _v2_json([1, 3, 224, 224], ["FP32"])), 400,
                                  "unknown datatype ['FP32']"),
        "output name not a string": (lambda: _v2(server.url, _v2_with(outputs=[{"name": ["logits"]}])), 400,
                                     "unknown output ['logits']"),
        "a shape of booleans": (lambda: _v2(server.url, _v2_json([True, 3, 224, 224])), 400,
                                "a shape of non-negative integers"),
        "topk not ASCII digits": (lambda: httpx.post(server.url + "/v1/predict", data={"topk": "\u00b2"},
                                                     files=[("file", ("a.jpg", photo, "image/jpeg"))]), 400,
                                  "topk must be a positive integer"),
        # these two were answered as if JSON's true were 1 and an id could be any value
        "topk true": (lambda: _v2(server.url, _v2_with(parameters={"topk": True})), 400,
                      "topk must be a positive integer, got True"),
        "id not a string": (lambda: _v2(server.url, _v2_with(id=7)), 400, "'id' must be a string, got int"),
    }
    good = lambda: _upload(server.url, "tench.jpg", (Path(demo_images()[0]).read_bytes()))
    with ThreadPoolExecutor(8) as pool:  # the good requests ride in the same batches as the bad ones
        bad_futures = {k: pool.submit(call) for k, (call, _, _) in cases.items()}
        good_futures = [pool.submit(good) for _ in range(6)]
    for k, (_, status, says) in cases.items():
        r = bad_futures[k].result()
        assert r.status_code == status and says in r.json()["error"], (k, r.status_code, r.text)
    assert all(f.result().status_code == 200 for f in good_futures)
    assert server.proc.poll() is None


def test_metrics_count_requests_batches_and_images(server):
    with ThreadPoolExecutor(16) as pool:  # concurrency 16, one image each: dynamic batching groups them
        rs = list(pool.map(lambda _: _upload(server.url, "p.jpg", demo_images()[1].read_bytes()), range(32)))
    assert all(r.status_code == 200 for r in rs)
    photo = demo_images()[1].read_bytes()  # ten images in one request, over --max-batch 8
    ten = httpx.post(server.url + "/v1/predict", timeout=60,
                     files=[("files", (f"{i}.jpg", photo, "image/jpeg")) for i in range(10)])
    assert ten.status_code == 200 and len({p["topk"][0]["id"] for p in ten.json()["predictions"]}) == 1
    text = httpx.get(server.url + "/metrics").text

    def value(metric: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(metric) and f'model="{LITE0}"' in line)
    batches, images = value("cvzoo_batch_size_count"), value("cvzoo_batch_size_sum")
    assert images >= 42 and images / batches > 1.5, (images, batches)  # batches of more than one request
    assert value('cvzoo_batch_size_bucket{le="8.0"') == batches  # and none over --max-batch
    assert value('cvzoo_requests_total{endpoint="v1_predict"') >= 32
    assert 'status="200"' in text and "cvzoo_queue_seconds_bucket" in text and "cvzoo_images_total" in text


def test_tritonclient_reads_each_models_statistics_split_by_stage(server):
    """Triton's statistics extension: cumulative per model, so this reads the difference its own requests make."""
    import tritonclient.http as tc
    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")

    def stats():
        (m,) = client.get_inference_statistics(LITE0)["model_stats"]
        return m
    before = stats()
    x = np.zeros((2, 3, 224, 224), np.float32)
    with ThreadPoolExecutor(8) as pool:  # 8 requests of 2 images and one of the wrong shape
        good = list(pool.map(lambda _: _v2(server.url, **_v2_binary(x)), range(8)))
    bad = _v2(server.url, **_v2_binary(x[:, :, :100]))
    assert [r.status_code for r in good] == [200] * 8 and bad.status_code == 400
    after = stats()

    def delta(path):
        a, b = after, before
        for key in path.split("."):
            a, b = a[key], b[key]
        return a - b
    assert delta("inference_count") == 16
    parts = ["compute_input", "queue", "compute_infer", "compute_output"]
    for part in ["success", *parts]:
        assert delta(f"inference_stats.{part}.count") == 8, part
        assert delta(f"inference_stats.{part}.ns") > 0, part
    assert delta("inference_stats.fail.count") == 1
    # each request's parts lie within its own time, one after another
    assert delta("inference_stats.success.ns") >= sum(delta(f"inference_stats.{p}.ns") for p in parts)
    runs = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    runs_before = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    new_runs = {n: c - runs_before.get(n, 0) for n, c in runs.items() if c > runs_before.get(n, 0)}
    assert sum(n * c for n, c in new_runs.items()) == 16 and max(new_runs) <= 8, new_runs
    assert delta("execution_count") == sum(new_runs.values())
    every = client.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in every] == [LITE0] and "statistics" in client.get_server_metadata()["extensions"]
    assert httpx.get(server.url + "/v2/models/nope/stats").status_code == 404


def test_the_page_shows_the_top1_of_an_uploaded_photo(server, browser, artifacts):
    page, errors, _ = open_page(browser, server.url + "/")
    photo = demo_images()[2]
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#top1", timeout=30000)
    assert page.locator("#top1").inner_text() == Predictor(artifacts(LITE0)).predict(photo).names[0]
    assert "ms" in page.locator("#latency").inner_text() and errors == []


def test_sigterm_answers_every_request_in_flight(artifacts):
    s = Server(artifacts(LITE0), "--max-batch", "1", "--threads", "1")
    body = demo_images()[0].read_bytes()

    def send(_):
        r = _upload(s.url, "p.jpg", body)
        return r.status_code, time.monotonic()
    n = 24
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(send, i) for i in range(n)]
        # the signal once every request has been received (one not yet read is not in flight: its connection closes)
        received = 0
        while received < n:
            text = httpx.get(s.url + "/metrics").text
            line = [x for x in text.splitlines() if x.startswith("cvzoo_requests_in_flight{")]
            answered = sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                           if x.startswith("cvzoo_requests_total{"))
            received = answered + (float(line[0].rsplit(" ", 1)[1]) if line else 0)
        s.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        done = [f.result() for f in futures]
    assert [c for c, _ in done] == [200] * n
    assert max(t for _, t in done) > signalled  # some were still queued or running when the signal came
    assert s.proc.wait(timeout=60) in (0, -signal.SIGTERM) and "Traceback" not in s.proc.stderr.read()


def test_an_engine_fault_fails_its_batch_only_and_is_counted(artifacts):
    """An engine that fails on a poisoned batch (a NaN row), or answers it without a class axis (an inf row), behind
    the real app and uvicorn."""
    import uvicorn

    from cvzoo.artifact import Artifact
    from cvzoo.serve import Served, create_app
    from cvzoo.serve.app import Metrics
    from cvzoo.serve.batcher import Batcher

    class Failing:
        def __init__(self, engine):
            self.engine = engine

        def run(self, x):
            if np.isnan(x).any():
                raise RuntimeError("poisoned batch")
            if np.isinf(x).any():
                return np.zeros(len(x))  # no class axis: answering it fails in the server's own code
            return self.engine.run(x)
    art = Artifact.load(artifacts(LITE0))
    metrics = Metrics()
    batcher = Batcher([Failing(load_engine(art))], max_batch=1, max_delay_ms=0)
    port = _port()
    srv = uvicorn.Server(uvicorn.Config(create_app([Served(LITE0, art, batcher)], metrics), port=port,
                                        log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    while not srv.started:
        time.sleep(0.05)
    try:
        x = _pixels(demo_images()[:1])
        bad = x.copy()
        bad[0, 0, 0, 0] = np.nan
        r_bad = _v2(url, **_v2_binary(bad))
        r_good = _v2(url, _v2_json(list(x.shape), data=x.ravel().tolist()))
        assert r_bad.status_code == 500 and "poisoned batch" in r_bad.json()["error"]
        assert r_good.status_code == 200
        bad[0, 0, 0, 0] = np.inf
        r_malformed = _v2(url, **_v2_binary(bad))
        assert r_malformed.status_code == 500 and "internal server error" in r_malformed.json()["error"]
        assert _v2(url, _v2_json(list(x.shape), data=x.ravel().tolist())).status_code == 200
        text = httpx.get(url + "/metrics").text
        assert f'cvzoo_engine_errors_total{{model="{LITE0}"}} 1.0' in text
        assert f'cvzoo_requests_total{{endpoint="v2_infer",model="{LITE0}",status="500"}} 2.0' in text
    finally:
        srv.should_exit = True
        t.join(timeout=30)


def test_engines_are_warmed_at_load(artifacts):
    """The first requests do not pay an engine's first-run costs (OpenVINO compiles its batch-1 model then): every
    instance runs two batches when the model is loaded."""
    pytest.importorskip("openvino")
    from cvzoo.serve import load_models
    [served] = load_models([artifacts(LITE0)], engine="openvino", instances=2)
    engines = served.batcher.engines
    assert len(engines) == 2 and all(e.single is not None for e in engines)


def test_a_modified_artifact_is_refused_at_start_up(artifacts, tmp_path):
    import shutil
    copy = tmp_path / "art"
    shutil.copytree(artifacts(LITE0), copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    run = subprocess.run([sys.executable, "-m", "cvzoo", "serve", str(copy), "--port", str(_port())],
                         capture_output=True, text=True, timeout=120)
    err = " ".join(run.stderr.split())
    assert run.returncode == 2 and "sha256 differs from the manifest" in err and "Traceback" not in run.stderr
    assert run.stderr.count("error:") == 1


def test_a_port_in_use_is_refused_before_loading(artifacts):
    """One line naming the address, before the models load (uvicorn said so only after 'serving ...' lines)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "cvzoo", "serve", str(artifacts(LITE0)), "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and not run.stdout and run.stderr.count("error:") == 1, run.stderr
    assert f"127.0.0.1:{port}: cannot listen there (Address already in use)" in " ".join(run.stderr.split())



@pytest.mark.parametrize("option, line", [
    (dict(engine="tensorrt"), "unknown engine 'tensorrt' (known: onnxruntime"),
    (dict(threads=0), "--threads must be >= 1, got 0"),
    (dict(instances=0), "--instances must be >= 1, got 0"),
    (dict(max_batch=0), "--max-batch must be >= 1"),
    (dict(max_body_mb=0), "--max-body-mb must be > 0, got 0"),
    (dict(ray="local", replicas=0), "--replicas must be >= 1, got 0")])
def test_a_bad_option_is_refused_before_any_model_is_looked_up(option, line):
    """One line naming the option, before the unknown model (or a zoo name's export, or a Ray replica) is reached."""
    from cvzoo.errors import CvzooError
    from cvzoo.serve import serve
    with pytest.raises(CvzooError) as refused:
        serve(["no-such-model"], **option)
    assert str(refused.value).startswith(line), refused.value

@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray at a time (with test_sweep's, in the group "ray_server")
def test_the_same_app_as_a_ray_serve_deployment(artifacts, tmp_path):
    """`--ray local`: a local Ray, two replicas behind Ray's HTTP proxy, the same answers; SIGTERM removes the
    deployment and stops that Ray."""
    pytest.importorskip("ray.serve")
    import tritonclient.http as tc
    log = tmp_path / "serve.log"
    s = Server(artifacts(LITE0), "--ray", "local", "--replicas", "2", log=log)
    try:
        files = demo_images()[:2]
        x = _pixels(files)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = tc.InferenceServerClient(url=f"127.0.0.1:{s.port}").infer(LITE0, [inp])
        np.testing.assert_allclose(res.as_numpy("logits"), load_engine(artifacts(LITE0)).run(x), atol=1e-4)
        r = httpx.post(s.url + "/v1/predict", files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files],
                       timeout=60)
        want = list(Predictor(artifacts(LITE0)).predict_paths(files))
        assert r.status_code == 200 and [p["topk"][0]["id"] for p in r.json()["predictions"]] == [w.ids[0] for w in want]
    finally:
        code = s.stop()
    said = log.read_text()
    assert code == 0 and "2 replica(s)" in said and "Traceback" not in said, said[-3000:]


class _Timed:
    """An engine that takes `seconds` per batch and records each batch's size, start and end."""

    def __init__(self, seconds: float):
        self.seconds, self.runs = seconds, []

    def run(self, x):
        t0 = time.perf_counter()
        time.sleep(self.seconds)
        self.runs.append((len(x), t0, time.perf_counter()))
        return x[:, :, 0, 0]


def _in_own_loop(scenario):
    import asyncio
    with ThreadPoolExecutor(1) as pool:  # a thread of its own: the browser tests' Playwright holds this one's loop
        return pool.submit(asyncio.run, scenario()).result()


def test_a_batch_answered_with_missing_rows_fails_that_batch_only():
    import asyncio

    from cvzoo.serve.batcher import Batcher, EngineError

    class DropsRows:  # one row per batch, whatever the batch
        def run(self, x):
            return x[:1, :, 0, 0]

    async def scenario():
        b = Batcher([DropsRows()], max_batch=4, max_delay_ms=50)
        b.start()
        rows = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
        together = await asyncio.gather(*(b.infer(r[None]) for r in rows), return_exceptions=True)
        alone = await b.infer(rows[2:])
        await b.drain()
        return together, alone
    together, alone = _in_own_loop(scenario)
    assert all(isinstance(e, EngineError) and "answered 1 rows" in str(e) for e in together), together
    assert alone.tolist() == [[2.0]]


def test_requests_that_do_not_stack_fail_their_batch_only():
    import asyncio

    from cvzoo.serve.batcher import Batcher, EngineError
    engine = _Timed(0)

    async def scenario():
        b = Batcher([engine], max_batch=2, max_delay_ms=50)
        b.start()
        odd = await asyncio.gather(b.infer(np.zeros((1, 1, 1, 1), np.float32)),
                                   b.infer(np.zeros((1, 2, 1, 1), np.float32)), return_exceptions=True)
        after = await b.infer(np.ones((2, 1, 1, 1), np.float32))
        await b.drain()
        return odd, after
    odd, after = _in_own_loop(scenario)
    assert all(isinstance(e, EngineError) and "batch of 2" in str(e) for e in odd), odd
    assert after.tolist() == [[1.0], [1.0]]


def test_a_full_batch_starts_when_the_run_before_it_ends_even_while_the_event_loop_is_busy():
    """The next full batch waits in the engine's own thread, so a busy event loop does not hold the engine idle; a
    short batch is not queued behind a running one, and gets what came in meanwhile."""
    import asyncio

    from cvzoo.serve.batcher import Batcher
    engine = _Timed(0.1)

    async def scenario():
        b = Batcher([engine], max_batch=4, max_delay_ms=0)
        b.start()
        rows = np.arange(11, dtype=np.float32).reshape(11, 1, 1, 1)
        asks = [asyncio.ensure_future(b.infer(rows[a:z])) for a, z in ((0, 4), (4, 8), (8, 9))]
        await asyncio.sleep(0.02)
        asks.append(asyncio.ensure_future(b.infer(rows[9:11])))
        await asyncio.sleep(0)
        time.sleep(0.6)  # the event loop busy well past the first two runs
        unblocked = time.perf_counter()
        out = await asyncio.gather(*asks)
        await b.drain()
        return rows, out, unblocked
    rows, out, unblocked = _in_own_loop(scenario)
    asked = ((0, 4), (4, 8), (8, 9), (9, 11))
    assert [o.ravel().tolist() for o in out] == [rows[a:z].ravel().tolist() for a, z in asked]
    (n1, _, end1), (n2, start2, _), (n3, start3, _) = engine.runs
    assert (n1, n2, n3) == (4, 4, 3), engine.runs
    assert start2 - end1 < 0.15, f"the second batch started {start2 - end1:.3f} s after the first ended"
    assert start3 >= unblocked


def test_a_request_over_max_batch_runs_in_parts_of_max_batch():
    from cvzoo.serve.batcher import Batcher
    from cvzoo.serve.stats import RequestTimes
    engine = _Timed(0.05)

    async def scenario():
        b = Batcher([engine], max_batch=4, max_delay_ms=0)
        b.start()
        rows = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
        times = RequestTimes()
        out = await b.infer(rows, times)
        await b.drain()
        return rows, out, times
    rows, out, times = _in_own_loop(scenario)
    assert out.ravel().tolist() == rows.ravel().tolist()
    assert [n for n, _, _ in engine.runs] == [4, 4, 2]
    assert times.compute_infer == pytest.approx(sum(end - start for _, start, end in engine.runs), abs=0.01)


def test_a_short_batch_waits_max_delay_for_more_requests():
    import asyncio

    from cvzoo.serve.batcher import Batcher
    engine = _Timed(0)

    async def scenario():
        b = Batcher([engine], max_batch=8, max_delay_ms=300)
        b.start()
        t0 = time.perf_counter()
        first = asyncio.ensure_future(b.infer(np.ones((1, 1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)
        second = await asyncio.wait_for(b.infer(np.zeros((1, 1, 1, 1), np.float32)), 5)
        out = [await first, second]
        await b.drain()
        return t0, out
    t0, out = _in_own_loop(scenario)
    assert [o.ravel().tolist() for o in out] == [[1.0], [0.0]]
    [(n, start, _)] = engine.runs
    assert n == 2 and start - t0 >= 0.3


def test_a_json_answer_is_strict_json_and_keeps_float32_exactly():
    from cvzoo.serve.protocol import encode_response

    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    x[1, 5], x[1, 6] = np.nan, np.inf  # JSON has neither: null, where binary data would keep them
    names = np.array([[b"tench", "caf\u00e9".encode()]], dtype=object)
    body, headers = encode_response("m", "r1", [("logits", "FP32", x), ("topk_indices", "INT64", np.array([[3, 1]])),
                                                ("topk_names", "BYTES", names)], set())

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    head = json.loads(body, parse_constant=refuse)
    assert headers == {} and head["id"] == "r1"
    logits, idx, got_names = head["outputs"]
    values = logits["data"]
    assert logits["shape"] == [2, 1000] and values[1005] is None and values[1006] is None
    finite = np.isfinite(x.reshape(-1))
    np.testing.assert_array_equal(np.array(values, dtype=object)[finite].astype(np.float32), x.reshape(-1)[finite])
    assert idx == {"name": "topk_indices", "datatype": "INT64", "shape": [1, 2], "data": [3, 1]}
    assert got_names["data"] == ["tench", "caf\u00e9"]
