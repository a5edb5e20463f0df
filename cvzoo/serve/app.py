"""The HTTP service: KServe v2 (`/v2/...`), `POST /v1/predict` (uploaded images -> predict's JSON), Prometheus
`/metrics` and a web page at `/`. Built with FastAPI; run by uvicorn (`serve`)."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect

from ..artifact import Artifact
from ..postprocess import Prediction, predictions_from_logits, softmax, topk
from ..preprocess import decode
from .batcher import BatchStats, Batcher, EngineError
from .protocol import (HEADER_LENGTH, VERSION, ProtocolError, Tensor, encode_response, is_count, parameters,
                       parse_request)
from .stats import ModelStats, RequestTimes

# each output's datatype and its length per image (None: the number of classes, -1: the request's top-k); the
# metadata, the model configuration and the answers all read it
OUTPUTS = {"logits": ("FP32", None), "probabilities": ("FP32", None), "topk_indices": ("INT64", -1),
           "topk_probabilities": ("FP32", -1), "topk_names": ("BYTES", -1)}
DEFAULT_TOPK = 5
log = logging.getLogger(__name__)


@dataclass
class Served:
    """One artifact behind the service."""
    name: str
    artifact: Artifact
    batcher: Batcher

    @property
    def size(self) -> int:
        return self.artifact.preprocessing.input_size

    @property
    def classes(self) -> list[str]:
        return self.artifact.class_names


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cvzoo_requests", "Requests by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("cvzoo_request_seconds", "Request latency, arrival to answer", ["model"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue = Histogram("cvzoo_queue_seconds", "Time a request waited for its batch", ["model"], registry=r,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.batch = Histogram("cvzoo_batch_size", "Images per engine batch", ["model"], registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.images = Counter("cvzoo_images", "Images answered (images/s: its rate)", ["model"], registry=r)
        self.engine_errors = Counter("cvzoo_engine_errors", "Engine batches that failed", ["model"], registry=r)
        self.in_flight = Gauge("cvzoo_requests_in_flight", "Requests received and not yet answered", ["model"],
                               registry=r)
        self.models: dict[str, ModelStats] = {}  # Triton's statistics extension, by model

    def stats(self, model: str) -> BatchStats:
        m = self.models.setdefault(model, ModelStats())
        return BatchStats(on_batch=self.batch.labels(model).observe, on_queue_wait=self.queue.labels(model).observe,
                          on_engine_error=self.engine_errors.labels(model).inc, on_batch_run=m.on_batch_run)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(served: Sequence[Served], metrics: Optional[Metrics] = None, max_body_mb: float = 64.0,
               decode_workers: int = 4) -> App:
    models = {s.name: s for s in served}
    metrics = metrics or Metrics()
    for s in served:  # the batchers report to this app's metrics
        s.batcher.stats = metrics.stats(s.name)
    decoder = ThreadPoolExecutor(decode_workers, thread_name_prefix="cvzoo-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for s in served:
            s.batcher.start()
        yield
        # uvicorn has answered every request in flight by now (SIGTERM: no new connections, open ones finish)
        for s in served:
            await s.batcher.drain()
        decoder.shutdown(wait=True)

    app = App(title="cvzoo serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    max_bytes = int(max_body_mb * 1024 * 1024)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.state.models, app.state.metrics = models, metrics

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    def model(name: str, version: Optional[str] = None) -> Served:
        if name not in models:
            raise HTTPError(404, f"unknown model '{name}' (serving: {', '.join(models)})")
        if version not in (None, VERSION):
            raise HTTPError(404, f"model '{name}' has no version '{version}' (versions: {VERSION})")
        return models[name]

    async def answer(s: Served, endpoint: str, work):
        """`work(times)`'s answer, counted in the metrics and the statistics."""
        t0 = time.perf_counter()
        status, times = 200, RequestTimes()
        metrics.in_flight.labels(s.name).inc()
        try:
            return await work(times)
        except HTTPError as e:
            status = e.status
            raise
        except EngineError as e:
            status = 500
            raise HTTPError(500, str(e)) from None
        except Exception:
            status = 500
            raise
        finally:
            took = time.perf_counter() - t0
            metrics.in_flight.labels(s.name).dec()
            metrics.requests.labels(s.name, endpoint, str(status)).inc()
            metrics.latency.labels(s.name).observe(took)
            metrics.models[s.name].on_answer(times, took, ok=status < 400)

    async def images_to_arrays(s: Served, items: list[tuple[str, bytes]]) -> list:
        """Decoded and preprocessed like `predict`, in the decode pool: an array or an error line per image."""
        loop = asyncio.get_running_loop()
        pre = s.artifact.preprocessing
        done = await asyncio.gather(*(loop.run_in_executor(decoder, decode, Path(name), pre, False, data)
                                      for name, data in items))
        return [d.array if d.error is None else d.error for d in done]

    async def run_rows(s: Served, x: np.ndarray, times: RequestTimes) -> np.ndarray:
        out = await s.batcher.infer(np.ascontiguousarray(x, dtype=np.float32), times)
        metrics.images.labels(s.name).inc(len(x))
        return out

    def platform(s: Served) -> str:
        return f"cvzoo_{s.artifact.manifest.engine or 'onnxruntime'}"

    # ------------------------------------------------------------------ KServe v2
    @app.get("/v2")
    async def server_metadata():
        from .. import __version__
        return {"name": "cvzoo", "version": __version__,
                "extensions": ["binary_tensor_data", "classification", "model_configuration", "statistics"]}

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if all(s.batcher.ready for s in served) else 503)

    @app.get("/v2/models/stats")  # ahead of the metadata route, which would take "stats" for a model's name
    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_statistics(name: Optional[str] = None, version: Optional[str] = None):
        names = [model(name, version).name] if name else list(models)
        return {"model_stats": [metrics.models[n].as_json(n, VERSION) for n in names]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: Optional[str] = None):
        s = model(name, version)
        a = s.artifact
        n = len(s.classes)
        return {"name": s.name, "versions": [VERSION], "platform": platform(s),
                "inputs": [{"name": a.input_name, "datatype": "FP32", "shape": [-1, 3, s.size, s.size]},
                           {"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],  # [N] is read too
                "outputs": [{"name": o, "datatype": t, "shape": [-1, d or n]} for o, (t, d) in OUTPUTS.items()],
                "parameters": {"precision": a.precision, "preprocessing": a.preprocessing.model_dump(mode="json"),
                               "topk_default": DEFAULT_TOPK}}

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: Optional[str] = None):
        """Triton's model configuration extension, which Triton's perf_analyzer reads: the batch limit, the dynamic
        batching, and both inputs optional (a request carries one of them)."""
        s = model(name, version)
        b, n = s.batcher, len(s.classes)
        return {"name": s.name, "platform": platform(s), "max_batch_size": b.max_batch,
                "input": [{"name": s.artifact.input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                           "dims": [3, s.size, s.size], "optional": True},
                          {"name": "image", "data_type": "TYPE_STRING", "dims": [1], "optional": True}],
                "output": [{"name": o, "data_type": "TYPE_STRING" if t == "BYTES" else f"TYPE_{t}", "dims": [d or n]}
                           for o, (t, d) in OUTPUTS.items()],
                "dynamic_batching": {"max_queue_delay_microseconds": round(b.max_delay * 1e6)},
                "instance_group": [{"count": len(b.engines)}]}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: Optional[str] = None):
        return Response(status_code=200 if model(name, version).batcher.ready else 503)

    # KServe v2 infer, the hot path: an ASGI app that App runs ahead of FastAPI's middleware and router
    async def infer(scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            s = model(request.path_params["name"], request.path_params["version"])
            body = await request.body()

            async def work(times: RequestTimes):
                t0 = time.perf_counter()
                try:
                    header, tensors = parse_request(body, request.headers.get(HEADER_LENGTH))
                    k, asked = v2_outputs(header)
                    x = await v2_input(s, tensors)
                except ProtocolError as e:
                    raise HTTPError(400, str(e)) from None
                times.compute_input = time.perf_counter() - t0
                logits = await run_rows(s, x, times)
                t0 = time.perf_counter()
                response = v2_response(s, header, k, asked, logits)
                times.compute_output = time.perf_counter() - t0
                return response
            response = await answer(s, "v2_infer", work)
        except HTTPError as e:
            response = JSONResponse({"error": e.message}, status_code=e.status)
        except ClientDisconnect:
            return
        except BodyLimit.TooLarge:
            raise
        except Exception as e:  # what ServerErrorMiddleware does for the other routes
            log.exception("v2 infer failed")
            response = JSONResponse({"error": f"internal server error: {type(e).__name__}"}, status_code=500)
        await response(scope, receive, send)
    app.infer = BodyLimit(infer, max_bytes)

    async def v2_input(s: Served, tensors: list[Tensor]) -> np.ndarray:
        if len(tensors) != 1:
            raise ProtocolError(f"one input expected ('{s.artifact.input_name}' FP32 or 'image' BYTES), got "
                                f"{len(tensors)}")
        t = tensors[0]
        if t.name not in (s.artifact.input_name, "image"):
            raise ProtocolError(f"unknown input '{t.name}' ('{s.artifact.input_name}' FP32 or 'image' BYTES)")
        if t.datatype == "BYTES":
            arrays = await images_to_arrays(s, [(f"{t.name}[{i}]", b) for i, b in enumerate(t.value)])
            bad = [a for a in arrays if isinstance(a, str)]
            if bad:
                raise ProtocolError(bad[0])
            if not arrays:
                raise ProtocolError(f"input '{t.name}': no images")
            return np.stack(arrays)
        want = [3, s.size, s.size]
        if t.datatype != "FP32":
            raise ProtocolError(f"input '{t.name}': datatype {t.datatype}, expected FP32 (or BYTES images)")
        if len(t.shape) != 4 or t.shape[1:] != want or t.shape[0] < 1:
            raise ProtocolError(f"input '{t.name}': shape {t.shape}, expected [N, {', '.join(map(str, want))}]")
        return t.value

    def v2_outputs(header: dict) -> tuple[int, list[tuple[str, dict]]]:
        """The request's top-k and the outputs it asks for, each with its parameters: checked before it runs."""
        k = parameters(header, "the request").get("topk", DEFAULT_TOPK)
        if not is_count(k) or k < 1:
            raise ProtocolError(f"parameters.topk must be a positive integer, got {k!r}")
        asked = header.get("outputs") or [{"name": n} for n in OUTPUTS]
        if not isinstance(asked, list):
            raise ProtocolError("'outputs' must be a list of objects with a name")
        out = []
        for o in asked:
            if not isinstance(o, dict):
                raise ProtocolError(f"each output must be an object with a name, got {o!r}")
            oname = o.get("name")
            if not isinstance(oname, str) or oname not in OUTPUTS:
                raise ProtocolError(f"unknown output {oname!r} (outputs: {', '.join(OUTPUTS)})")
            params = parameters(o, f"output '{oname}'")
            cls = params.get("classification")
            if cls:
                if oname not in ("logits", "probabilities"):
                    raise ProtocolError(f"classification applies to logits or probabilities, not {oname}")
                if not is_count(cls) or cls < 1:
                    raise ProtocolError(f"output '{oname}': classification must be a positive integer, got {cls!r}")
            out.append((oname, params))
        return k, out

    def v2_response(s: Served, header: dict, k: int, asked: list[tuple[str, dict]], logits: np.ndarray) -> Response:
        # each computed only when asked for: top-k ranks the logits, as predict does, so an answer that wants
        # indices alone needs no softmax
        probs = cache(lambda: softmax(logits).astype(np.float32))
        best = cache(lambda: topk(logits, k)[0])
        full = {"logits": lambda: logits.astype(np.float32), "probabilities": probs,
                "topk_indices": lambda: best().astype(np.int64),
                "topk_probabilities": lambda: np.take_along_axis(probs(), best(), axis=-1),
                "topk_names": lambda: np.array([[s.classes[i].encode() for i in row] for row in best()],
                                               dtype=object)}
        outputs, binary = [], set()
        for oname, params in asked:
            dtype, arr = OUTPUTS[oname][0], full[oname]()
            cls = params.get("classification")
            if cls:  # Triton's classification extension: "value:index:label", best first
                ci = topk(logits, cls)[0]  # ranked as top-k is: probabilities keep the logits' order
                arr = np.array([[f"{v:f}:{i}:{s.classes[i]}".encode() for i, v in zip(ri, rv)]
                                for ri, rv in zip(ci, np.take_along_axis(arr, ci, -1))], dtype=object)
                dtype = "BYTES"
            if params.get("binary_data"):
                binary.add(oname)
            outputs.append((oname, dtype, arr))
        body, headers = encode_response(s.name, header.get("id"), outputs, binary)
        return Response(body, headers=headers, media_type="application/octet-stream" if binary else "application/json")

    # ------------------------------------------------------------------ convenience and the page
    @app.post("/v1/predict")
    async def predict(request: Request):
        try:
            form = await request.form()
        except BodyLimit.TooLarge:
            raise
        except Exception as e:  # not multipart, or a malformed one
            raise HTTPError(400, f"expected multipart/form-data with image files: {e}") from None
        name = form.get("model") or next(iter(models))
        s = model(str(name))
        text = str(form.get("topk") or DEFAULT_TOPK)
        k = int(text) if text.isascii() and text.isdigit() else 0
        if k < 1:
            raise HTTPError(400, f"topk must be a positive integer, got '{text}'")
        files = [f for key, f in form.multi_items() if key in ("file", "files") and hasattr(f, "read")]

        async def work(times: RequestTimes):
            if not files:
                raise HTTPError(400, "no image files in the form (field 'file' or 'files')")
            items = [(f.filename or "upload", await f.read()) for f in files]
            t0 = time.perf_counter()
            arrays = await images_to_arrays(s, items)
            good = [a for a in arrays if not isinstance(a, str)]
            if not good:
                raise HTTPError(400, arrays[0])
            x = np.stack(good)
            times.compute_input = time.perf_counter() - t0
            logits = await run_rows(s, x, times)
            t1 = time.perf_counter()
            names = [name for (name, _), a in zip(items, arrays) if not isinstance(a, str)]
            preds = iter(predictions_from_logits(names, logits, s.classes, k))
            rows = [Prediction(name, [], [], [], error=a).as_dict() if isinstance(a, str) else next(preds).as_dict()
                    for (name, _), a in zip(items, arrays)]
            times.compute_output = time.perf_counter() - t1
            return {"model": s.name, "predictions": rows, "latency_ms": round(1000 * (time.perf_counter() - t0), 2)}
        return await answer(s, "v1_predict", work)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        from .page import render
        return render(list(models))

    return app


INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class App(FastAPI):
    """FastAPI, with KServe v2 infer requests (the hot path) answered before its middleware stack and router, which
    cost 15-23% of the server's CPU per request there (docs/serving.md). `infer` is that route's ASGI app."""
    infer = None

    def build_middleware_stack(self):
        rest, infer = super().build_middleware_stack(), self.infer

        async def dispatch(scope, receive, send):
            m = scope["type"] == "http" and scope["method"] == "POST" and INFER_PATH.fullmatch(scope["path"])
            if m:
                scope["path_params"] = {"name": m[1], "version": m[2]}
                await infer(scope, receive, send)
            else:
                await rest(scope, receive, send)
        return dispatch


class BodyLimit:
    """Refuses a request body over the limit with 413, whether Content-Length says so or the stream shows it."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        message = f"request body over --max-body-mb ({self.max_bytes} bytes)"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise BodyLimit.TooLarge()
            return msg
        try:
            await self.app(scope, counted, send)
        except BodyLimit.TooLarge:
            await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
