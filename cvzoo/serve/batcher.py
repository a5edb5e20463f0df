"""Dynamic batching: requests queue per model; batches of up to `max_batch` images go to the engine instances, each
run in the instance's own thread, and each request is answered with its rows. An engine error fails that batch's
requests only."""
from __future__ import annotations

import asyncio
import time
from collections import deque
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


def _timed(engine, x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The engine's answer, when its run started and how long it took."""
    t0 = time.perf_counter()
    out = engine.run(x)
    return out, t0, time.perf_counter() - t0


class Batcher:
    """One model's queue and its engine instances (objects with `.run(np.ndarray) -> np.ndarray`).

    A batch goes to an instance as soon as it is full, even while that instance runs another: it then waits in the
    instance's own thread queue and starts the moment the run before it ends, without a round trip through the event
    loop (which may be busy answering, and holds the GIL while it is). A batch that is not full waits for an idle
    instance and for `max_delay_ms` after its first request, as Triton's dynamic batcher does."""

    def __init__(self, engines: list, max_batch: int, max_delay_ms: float, stats: Optional[BatchStats] = None):
        if max_batch < 1 or max_delay_ms < 0 or not engines:
            raise ValueError("max_batch >= 1, max_delay_ms >= 0 and at least one engine instance")
        self.engines, self.max_batch, self.max_delay = engines, max_batch, max_delay_ms / 1000.0
        self.stats = stats or BatchStats()
        self.pools = [ThreadPoolExecutor(1, thread_name_prefix="cvzoo-engine") for _ in engines]
        self.pending: deque[_Item] = deque()
        self.pending_rows = 0
        self.in_flight = [0] * len(engines)  # per instance: its running batch and the one queued behind it
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.timer: Optional[asyncio.TimerHandle] = None

    @property
    def ready(self) -> bool:
        return self.loop is not None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def infer(self, x: np.ndarray, times: Optional[RequestTimes] = None) -> np.ndarray:
        """Rows of `x` -> their logits, run in some batch; `times` gets its queue wait and that batch's engine
        time. More rows than `max_batch` run as several parts, so that no engine run is larger."""
        if len(x) <= self.max_batch:
            item = _Item(x, self.loop.create_future(), times)
            self.pending.append(item)
            self.pending_rows += len(x)
            self._dispatch()
            return await item.future
        parts = [_Item(x[i:i + self.max_batch], self.loop.create_future(), RequestTimes())
                 for i in range(0, len(x), self.max_batch)]
        self.pending.extend(parts)
        self.pending_rows += len(x)
        self._dispatch()
        outs = await asyncio.gather(*(p.future for p in parts), return_exceptions=True)
        failed = [o for o in outs if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
        if times is not None:  # each full part is a batch of its own: their engine times add up
            times.queue = parts[0].times.queue
            times.compute_infer = sum(p.times.compute_infer for p in parts)
        return np.concatenate(outs)

    def _dispatch(self) -> None:
        """Hand out what is pending: full batches to instances with fewer than two batches in flight, the idle ones
        first; a short batch to an idle instance once its first request has waited `max_delay`."""
        while self.pending:
            full = self.pending_rows >= self.max_batch
            i = min(range(len(self.engines)), key=self.in_flight.__getitem__)
            if self.in_flight[i] >= (2 if full else 1):
                return  # a completion calls again
            if not full:
                wait = self.pending[0].queued + self.max_delay - time.perf_counter()
                if wait > 0:
                    if self.timer is None:
                        self.timer = self.loop.call_later(wait, self._on_timer)
                    return
            self._submit(i, *self._take())

    def _on_timer(self) -> None:
        self.timer = None
        self._dispatch()

    def _take(self) -> tuple[list[_Item], int]:
        """The pending requests of the next batch and their rows: the first one always, then while they fit in
        max_batch rows."""
        items = [self.pending.popleft()]
        n = len(items[0].x)
        while self.pending and n + len(self.pending[0].x) <= self.max_batch:
            items.append(self.pending.popleft())
            n += len(items[-1].x)
        self.pending_rows -= n
        return items, n

    def _submit(self, i: int, items: list[_Item], n: int) -> None:
        self.stats.on_batch(n)
        try:
            x = np.concatenate([it.x for it in items])
        except Exception as e:  # rows the app let through but that do not stack: their batch fails, not the server
            self._fail(items, n, e)
            return
        self.in_flight[i] += 1
        run = self.loop.run_in_executor(self.pools[i], _timed, self.engines[i], x)
        run.add_done_callback(lambda f: self._answer(i, items, n, f))

    def _answer(self, i: int, items: list[_Item], n: int, run: asyncio.Future) -> None:
        self.in_flight[i] -= 1
        self._dispatch()  # the next batch first: the engine waits for nothing of what follows
        try:
            out, started, seconds = run.result()
            if len(out) != n:
                raise RuntimeError(f"it answered {len(out)} rows")
        except Exception as e:  # the batch fails; the server goes on
            self._fail(items, n, e)
            return
        self.stats.on_batch_run(n, seconds)
        at = 0
        for it in items:
            waited = started - it.queued
            self.stats.on_queue_wait(waited)
            if it.times is not None:
                it.times.queue, it.times.compute_infer = waited, seconds
            if not it.future.done():
                it.future.set_result(out[at:at + len(it.x)])
            at += len(it.x)

    def _fail(self, items: list[_Item], n: int, e: Exception) -> None:
        self.stats.on_engine_error()
        for it in items:
            if not it.future.done():
                it.future.set_exception(EngineError(f"engine failed on a batch of {n}: {e}"))

    async def drain(self) -> None:
        """Wait for what is queued and running, then stop the engines."""
        while self.pending or any(self.in_flight):
            await asyncio.sleep(0.01)
        if self.timer is not None:
            self.timer.cancel()
        self.loop = None
        for p in self.pools:
            p.shutdown(wait=True)
        for e in self.engines:
            close = getattr(e, "close", None)
            if close:
                close()
