"""`cvzoo serve`: built artifacts as a network service (KServe v2 over HTTP, a convenience upload endpoint, Prometheus
metrics, a web page), with dynamic batching over K engine instances per model. `load_models` + `create_app` are the
Python API; `serve` runs them with uvicorn."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import CvzooError
from .app import Served, create_app
from .batcher import Batcher

__all__ = ["Served", "create_app", "load_models", "resolve", "serve"]


def resolve(models: Sequence[Union[str, Path]], verify_hashes: bool = True, random_init: bool = False) -> list:
    """Each artifact (or zoo name, exported once) loaded and checked: refused in one line if its files do not match
    its manifest or it has no trained weights (unless `random_init`)."""
    from ..artifact import Artifact
    from ..predict import artifact_for, require_weights
    return [require_weights(Artifact.load(artifact_for(m, random_init=random_init), verify_hashes=verify_hashes),
                            random_init) for m in models]


def _check(instances: int, max_batch: int, max_delay_ms: float, threads: Optional[int] = None,
           engine: Optional[str] = None) -> None:
    from ..engines import check_engine_options
    check_engine_options(engine, threads)
    if instances < 1:
        raise CvzooError(f"--instances must be >= 1, got {instances}")
    if max_batch < 1 or max_delay_ms < 0:
        raise CvzooError("--max-batch must be >= 1 and --max-delay-ms >= 0")


def _check_listen(host: str, port: int) -> None:
    """Refuse an address the server could not listen on before loading anything (uvicorn would say so only after)."""
    import socket
    if not 0 <= port <= 65535:
        raise CvzooError(f"--port must be 0-65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
            s.bind((host, port))
    except OSError as e:
        raise CvzooError(f"{host}:{port}: cannot listen there ({e.strerror or e}); choose another --port or --host") \
            from None


def load_models(models: Sequence[Union[str, Path]], engine: Optional[str] = None, instances: int = 1,
                threads: Optional[int] = None, max_batch: int = 8, max_delay_ms: float = 2.0,
                verify_hashes: bool = True, random_init: bool = False) -> list[Served]:
    """Each of `resolve(models)` with `instances` engine instances behind one batcher."""
    from ..bench import synthetic_batch
    from ..engines import load_engine
    from ..machine import physical_cores
    from ..runners import warm_up
    _check(instances, max_batch, max_delay_ms, threads, engine)
    threads = threads or max(1, physical_cores() // instances)
    served: list[Served] = []
    for art in resolve(models, verify_hashes, random_init):
        name = art.name
        if any(s.name == name for s in served):
            name = f"{art.name}-{art.precision}"
        if any(s.name == name for s in served):
            raise CvzooError(f"{art.folder}: a second {name}; serve one artifact per model and precision")
        engines = [load_engine(art, engine, threads=threads) for _ in range(instances)]
        for e in engines:  # at load, not on the first requests
            warm_up(e.run, synthetic_batch(e, 1, art.preprocessing.input_size, seed=0)[0])
        served.append(Served(name, art, Batcher(engines, max_batch, max_delay_ms)))
    return served


def serve(models: Sequence[Union[str, Path]], host: str = "127.0.0.1", port: int = 8000, engine: Optional[str] = None,
          instances: int = 1, threads: Optional[int] = None, max_batch: int = 8, max_delay_ms: float = 2.0,
          max_body_mb: float = 64.0, verify_hashes: bool = True, random_init: bool = False,
          ray: Optional[str] = None, replicas: int = 1, say=print) -> None:
    """Serve until SIGINT/SIGTERM; on either, requests in flight are answered before exit. `ray` ('local' or a Ray
    address): the same app as a Ray Serve deployment with `replicas` replicas instead of one uvicorn process."""
    options = dict(engine=engine, instances=instances, threads=threads, max_batch=max_batch, max_delay_ms=max_delay_ms,
                   verify_hashes=verify_hashes, random_init=random_init)
    # every option before anything loads or exports: a bad flag costs no export and no replica
    _check(instances, max_batch, max_delay_ms, threads, engine)
    if not max_body_mb > 0:
        raise CvzooError(f"--max-body-mb must be > 0, got {max_body_mb:g}")
    if replicas < 1:
        raise CvzooError(f"--replicas must be >= 1, got {replicas}")
    _check_listen(host, port)
    if ray is not None:
        from .on_ray import serve_on_ray
        folders = [a.folder for a in resolve(models, verify_hashes, random_init)]  # refused here, not in a replica
        serve_on_ray(folders, None if ray == "local" else ray, replicas, host, port, options, max_body_mb, say)
        return
    import uvicorn
    served = load_models(models, **options)
    app = create_app(served, max_body_mb=max_body_mb)
    for s in served:
        say(f"serving {s.name} ({s.artifact.precision}, {s.artifact.folder}): {instances} instance(s), batches up to "
            f"{max_batch} within {max_delay_ms:g} ms")
    say(f"http://{host}:{port}/ (page), /v2 (KServe v2), /v1/predict, /metrics")
    # no access log: its line per request was built even at log level warning, which drops it
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
