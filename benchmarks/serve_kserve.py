"""The peer server for serve_vs_kserve.py: a cvzoo artifact behind KServe's Python ModelServer (PyPI `kserve`), the
way KServe's own model servers (sklearn, xgboost, lightgbm) run a model: `predict` called per request on the event
loop, batch 1, no batching. The engine is cvzoo's own (`load_engine`: the same session options as `cvzoo serve`),
so only the HTTP side differs. Run in a venv with kserve and the engine, the repository on PYTHONPATH:

    python benchmarks/serve_kserve.py ARTIFACT --engine onnxruntime --threads 2 --port 8080 [--predict thread]

--predict thread: an async predict that runs the engine in the loop's thread pool instead (concurrent batch-1
runs), what a user who knows asyncio would write.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--engine", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--predict", choices=("loop", "thread"), default="loop")
    args = ap.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses the command line when it is imported
    import uvicorn
    bind = uvicorn.Config.__init__

    def loopback(self, *a, **kw):  # KServe binds 0.0.0.0 and has no option for it; the load stays on loopback
        bind(self, *a, **{**kw, "host": "127.0.0.1"})
    uvicorn.Config.__init__ = loopback
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    from cvzoo.artifact import Artifact
    from cvzoo.engines import load_engine
    art = Artifact.load(args.artifact)
    engine = load_engine(art, args.engine, threads=args.threads)

    def answer(request: InferRequest, logits: np.ndarray) -> InferResponse:
        top = logits.argmax(1)[:, None].astype(np.int64)  # what the load asks cvzoo serve for: the top-1 index
        out = InferOutput("topk_indices", list(top.shape), "INT64")
        out.set_data_from_numpy(top, binary_data=False)
        return InferResponse(response_id=request.id or "", model_name=art.name, infer_outputs=[out])

    class Classifier(kserve.Model):
        def load(self) -> bool:
            self.ready = True
            return True

    if args.predict == "loop":
        class Model(Classifier):
            def predict(self, payload: InferRequest, headers=None) -> InferResponse:
                return answer(payload, engine.run(payload.inputs[0].as_numpy()))
    else:
        class Model(Classifier):
            async def predict(self, payload: InferRequest, headers=None) -> InferResponse:
                x = payload.inputs[0].as_numpy()
                return answer(payload, await asyncio.get_running_loop().run_in_executor(None, engine.run, x))
    model = Model(art.name)
    model.load()
    kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1, enable_latency_logging=False
                       ).start([model])


if __name__ == "__main__":
    main()
