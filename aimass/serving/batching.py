"""Row batching shared by the ingress and the model replicas: continuous, with no wait at low load.

A request goes out at once while fewer than ``max_inflight`` calls are running, so an idle server adds
no latency. While calls are running, requests queue and leave together, up to ``max_rows`` rows, as
soon as one finishes: the busier the server, the bigger the batches, with no timer in the common
path. ``wait_s`` > 0 adds a fill window: a request that finds the server idle waits up to that long
for others (or until ``max_rows`` rows are queued), which trades latency for fuller batches.

The ingress uses it to merge concurrent requests for one version into one Ray call (``max_inflight``
4: calls overlap the network); a model replica uses it to merge the calls it receives into one model
call (``max_inflight`` 1: the model runs in a worker thread, one batch at a time, while the event loop
keeps taking requests).

Admission is bounded twice, so an overloaded server answers fast instead of making callers wait: at
most ``max_queued`` requests wait (the next one is refused at once), and a request that has waited
``max_wait_s`` without being sent is refused then (:class:`OverloadedError`, HTTP 503/429 with
``Retry-After``). A request already sent waits for its answer (the caller's own timeout applies).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from aimass.exceptions import ServingError

__all__ = ["OverloadedError", "RowBatcher"]


class OverloadedError(ServingError):
    code = "overloaded"
    http_status = 503


Send = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, dict[str, Any]]]]


class RowBatcher:
    """Merge concurrent ``submit(x)`` calls row-wise into ``send(concatenated)`` calls.

    ``send`` returns ``(rows_out, info)``; each caller gets its own rows and ``info`` with
    ``batch_rows`` / ``batch_requests`` set. Keys in ``once`` (e.g. events that must be counted once
    per call) go to the first caller of a batch only. A request with more rows than ``max_rows``
    runs alone. Over ``max_queued`` waiting requests, ``submit`` raises :class:`OverloadedError` at once;
    a request still waiting after ``max_wait_s`` (None: no limit) raises it then.
    """

    def __init__(self, send: Send, max_rows: int, *, max_queued: int = 1 << 20, max_inflight: int = 1,
                 wait_s: float = 0.0, what: str = "model", once: tuple[str, ...] = (),
                 max_wait_s: float | None = None) -> None:
        self.send = send
        self.max_rows = max(1, int(max_rows))
        self.max_queued = max_queued
        self.max_inflight = max(1, int(max_inflight))
        self.wait_s = max(0.0, float(wait_s))
        self.what = what
        self.once = once
        self.max_wait_s = max_wait_s
        self.inflight = 0
        self.pending: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def configure(self, max_rows: int, wait_s: float) -> None:
        self.max_rows, self.wait_s = max(1, int(max_rows)), max(0.0, float(wait_s))

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        if len(self.pending) >= self.max_queued:  # the bounded queue: refuse at once instead of waiting
            raise OverloadedError(f"model {self.what} is at capacity (its request queue is full)",
                                  fix="Retry after a short pause, or raise replicas / maxQueuedRequests.")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        item = (x, fut)
        self.pending.append(item)
        self.rows += int(x.shape[0])
        if self.inflight < self.max_inflight:
            if self.wait_s > 0 and self.rows < self.max_rows:
                if self._timer is None:  # idle: hold the batch open for others, at most wait_s
                    self._timer = loop.call_later(self.wait_s, self._on_timer)
            else:
                self._flush()
        if fut.done() or self.max_wait_s is None:
            return await fut
        # still queued: refuse it if it is not on its way within max_wait_s (a timer only for queued requests)
        expiry = loop.call_later(self.max_wait_s, self._expire, item)
        try:
            return await fut
        finally:
            expiry.cancel()

    def _expire(self, item: tuple[np.ndarray, asyncio.Future]) -> None:
        x, fut = item
        if fut.done():
            return
        for i, it in enumerate(self.pending):  # by identity: tuples holding arrays do not compare with ==
            if it is item:
                del self.pending[i]
                break
        else:
            return  # already sent: it waits for its answer
        self.rows -= int(x.shape[0])
        fut.set_exception(OverloadedError(f"model {self.what} is at capacity: the request waited {self.max_wait_s:g}s in its queue",
                                          fix="Retry after a short pause, or add replicas."))

    def _on_timer(self) -> None:
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self.pending and self.inflight < self.max_inflight:
            batch, rows = [], 0
            while self.pending and (not batch or rows + int(self.pending[0][0].shape[0]) <= self.max_rows):
                item = self.pending.popleft()
                rows += int(item[0].shape[0])
                batch.append(item)
            self.rows -= rows
            self.inflight += 1
            task = loop.create_task(self._run(batch, rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]], rows: int) -> None:
        try:
            xs = [x for x, _ in batch]
            out, info = await self.send(xs[0] if len(xs) == 1 else np.concatenate(xs, axis=0))
        except BaseException as e:  # noqa: BLE001 - every request of the batch gets the error
            for _, f in batch:
                if not f.done():
                    f.set_exception(e)
        else:
            info = {"batch_rows": rows, "batch_requests": len(batch), **info}
            rest = {k: v for k, v in info.items() if k not in self.once}
            start = 0
            for i, (x, f) in enumerate(batch):
                n = int(x.shape[0])
                if not f.done():
                    f.set_result((out[start:start + n], info if i == 0 else rest))
                start += n
        finally:
            self.inflight -= 1
            if self.pending:
                self._flush()
