"""`cvzoo serve --ray`: the same FastAPI app as a Ray Serve deployment, `replicas` copies behind Ray's HTTP proxy.
Each replica loads the artifacts itself (so their paths must be readable where it runs: local disk for a local Ray,
shared storage on a cluster) and has its own batchers and /metrics."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional, Sequence

from ..errors import CvzooError, Say

APP = "cvzoo"


def serve_on_ray(artifacts: Sequence[Path], address: Optional[str], replicas: int, host: str, port: int,
                 load_options: dict, max_body_mb: float, say: Say) -> None:
    """Runs until SIGINT/SIGTERM, then deletes the deployment (Ray Serve lets replicas finish what is in flight)."""
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise CvzooError("--ray needs Ray Serve: pip install 'cvzoo[ray]'") from None
    paths = [str(Path(a).resolve()) for a in artifacts]

    def build_app():  # runs in each replica
        from . import create_app, load_models
        return create_app(load_models(paths, **load_options), max_body_mb=max_body_mb)

    if address is None:
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    else:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deployed = False
    try:
        ray_serve.start(http_options={"host": host, "port": port})
        deployment = ray_serve.deployment(ray_serve.ingress(build_app)(), name=APP, num_replicas=replicas,
                                          ray_actor_options={"num_cpus": 1})
        ray_serve.run(deployment.bind(), name=APP, route_prefix="/")
        deployed = True
        say(f"Ray Serve: {replicas} replica(s) at http://{host}:{port}/ (page), /v2 (KServe v2), /v1/predict, "
            f"/metrics (per replica); Ray at {ray.get_runtime_context().gcs_address}")
        stop.wait()
    finally:
        try:
            if deployed:
                ray_serve.delete(APP)  # replicas finish what they hold, then stop
        finally:
            if address is None:  # the local Ray this call started goes with it
                ray.shutdown()
