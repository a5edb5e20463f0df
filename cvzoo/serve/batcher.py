"""Dynamic batching: requests queue per model; each engine instance takes what is queued, up to `max_batch` images or
until `max_delay_ms` after the first one, runs it as one batch in its own thread, and answers each request with its
rows. An engine error fails that batch's requests only."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .stats import RequestTimes


class EngineError(RuntimeError):
    """The engine failed on a batch: its requests are answered 500."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    times: Optional[RequestTimes] = None  # gets its queue wait and its batch's engine time
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Observers the server's metrics hang on (called on the event loop)."""
    on_batch: Callable[[int], None] = lambda n: None
    on_queue_wait: Callable[[float], None] = lambda s: None
    on_engine_error: Callable[[], None] = lambda: None
    on_batch_run: Callable[[int, float], None] = lambda images, seconds: None


def _timed(engine, x: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = engine.run(x)
    return out, time.perf_counter() - t0


class Batcher:
    """One model's queue and its engine instances (objects with `.run(np.ndarray) -> np.ndarray`)."""

    def __init__(self, engines: list, max_batch: int, max_delay_ms: float, stats: Optional[BatchStats] = None):
        if max_batch < 1 or max_delay_ms < 0 or not engines:
            raise ValueError("max_batch >= 1, max_delay_ms >= 0 and at least one engine instance")
        self.engines, self.max_batch, self.max_delay = engines, max_batch, max_delay_ms / 1000.0
        self.stats = stats or BatchStats()
        self.queue: Optional[asyncio.Queue] = None
        self.workers: list[asyncio.Task] = []
        self.pools = [ThreadPoolExecutor(1, thread_name_prefix="cvzoo-engine") for _ in engines]
        self.busy = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.workers = [asyncio.create_task(self._work(e, p)) for e, p in zip(self.engines, self.pools)]

    async def infer(self, x: np.ndarray, times: Optional[RequestTimes] = None) -> np.ndarray:
        """Rows of `x` -> their logits, run in some batch; `times` gets its queue wait and that batch's engine
        time."""
        item = _Item(x, asyncio.get_running_loop().create_future(), times)
        await self.queue.put(item)
        return await item.future

    async def _work(self, engine, pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        carry: Optional[_Item] = None
        while True:
            first = carry or await self.queue.get()
            carry, items, n = None, [first], len(first.x)
            deadline = loop.time() + self.max_delay
            while n < self.max_batch:
                wait = deadline - loop.time()
                try:
                    # wait_for makes a task per call: only when nothing is queued
                    nxt = (self.queue.get_nowait() if wait <= 0 or not self.queue.empty()
                           else await asyncio.wait_for(self.queue.get(), wait))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if n + len(nxt.x) > self.max_batch:  # would overflow: it opens the next batch
                    carry = nxt
                    break
                items.append(nxt)
                n += len(nxt.x)
            now = time.perf_counter()
            for it in items:
                self.stats.on_queue_wait(now - it.queued)
                if it.times is not None:
                    it.times.queue = now - it.queued
            self.stats.on_batch(n)
            self.busy += 1
            try:
                out, seconds = await loop.run_in_executor(pool, _timed, engine, np.concatenate([it.x for it in items]))
                if len(out) != n:
                    raise RuntimeError(f"it answered {len(out)} rows")
                self.stats.on_batch_run(n, seconds)
            except Exception as e:  # the batch fails; the server goes on
                self.stats.on_engine_error()
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(EngineError(f"engine failed on a batch of {n}: {e}"))
            else:
                at = 0
                for it in items:
                    if it.times is not None:
                        it.times.compute_infer = seconds
                    if not it.future.done():
                        it.future.set_result(out[at:at + len(it.x)])
                    at += len(it.x)
            finally:
                self.busy -= 1

    async def drain(self) -> None:
        """Wait for what is queued and running, then stop the workers and the engines."""
        while self.queue is not None and (not self.queue.empty() or self.busy):
            await asyncio.sleep(0.01)
        for w in self.workers:
            w.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        for p in self.pools:
            p.shutdown(wait=True)
        for e in self.engines:
            close = getattr(e, "close", None)
            if close:
                close()
