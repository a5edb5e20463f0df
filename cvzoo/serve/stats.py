"""Triton's statistics extension (`GET /v2/models[/{name}[/versions/{v}]]/stats`): cumulative counts and nanoseconds
per model, which Triton's perf_analyzer reads before and after each measurement to split a request's latency into
queue, compute input, compute infer and compute output. Updated on the event loop only, so no locks."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, fields


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += round(seconds * 1e9)

    def as_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class RequestTimes:
    """One request's parts, in seconds: recorded together when it is answered, since perf_analyzer refuses a read
    in which the parts' counts differ (a request in flight would have some and not others)."""
    compute_input: float = 0.0
    queue: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0


@dataclass
class ModelStats:
    """Per request: success / fail (arrival to answer), compute_input (the body to the input rows: parsing, decoding,
    preprocessing), queue (waiting for its batch), compute_infer (the engine's run of that batch), compute_output
    (the answer: softmax, top-k, encoding). Per batch: the engine's runs by batch size."""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))
    last_inference_ms: int = 0

    def on_batch_run(self, images: int, seconds: float) -> None:
        self.batches[images].add(seconds)
        self.last_inference_ms = int(time.time() * 1000)

    def on_answer(self, times: RequestTimes, seconds: float, ok: bool) -> None:
        if not ok:
            self.fail.add(seconds)
            return
        self.success.add(seconds)
        for part in fields(times):
            getattr(self, part.name).add(getattr(times, part.name))

    def as_json(self, name: str, version: str) -> dict:
        none = Duration().as_json()
        parts = ("success", "fail", *(f.name for f in fields(RequestTimes)))
        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": sum(n * d.count for n, d in self.batches.items()),
                "execution_count": sum(d.count for d in self.batches.values()),
                "inference_stats": {**{p: getattr(self, p).as_json() for p in parts},
                                    "cache_hit": none, "cache_miss": none},
                "batch_stats": [{"batch_size": n, "compute_input": none, "compute_infer": d.as_json(),
                                 "compute_output": none} for n, d in sorted(self.batches.items())],
                "memory_usage": []}
