"""RowBatcher: continuous batching with no wait at low load (the ingress's and the model replicas')."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np
import pytest

from aimass.serving.batching import OverloadedError, RowBatcher


class Model:
    """A send() that records each call's rows and, when gated, holds calls until released."""

    def __init__(self, gated: bool = False) -> None:
        self.calls: list[int] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def send(self, x: np.ndarray):
        self.calls.append(int(x.shape[0]))
        await self.gate.wait()
        return x * 2, {"cache_events": [("load", "m:1")], "extra": 1}


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(n, dtype=np.float32) + start).reshape(n, 1)


def test_an_idle_batcher_sends_a_request_at_once_with_no_timer() -> None:
    async def go():
        m = Model()
        b = RowBatcher(m.send, 32)
        t = time.perf_counter()
        out, info = await b.submit(rows(3))
        return m.calls, out, info, time.perf_counter() - t

    calls, out, info, took = asyncio.run(go())
    assert calls == [3]
    np.testing.assert_array_equal(out, rows(3) * 2)
    assert info["batch_rows"] == 3 and info["batch_requests"] == 1
    assert took < 0.05


def test_requests_that_arrive_while_the_model_works_run_together_next_split_back_in_order() -> None:
    async def go():
        m = Model(gated=True)
        b = RowBatcher(m.send, 8, once=("cache_events",))
        first = asyncio.ensure_future(b.submit(rows(1, 100)))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(b.submit(rows(n, 10 * i))) for i, n in enumerate((2, 3, 4))]
        await asyncio.sleep(0.01)
        assert m.calls == [1], "the first call is running; the others must wait for it, not go out alone"
        m.gate.set()
        return m.calls, await first, await asyncio.gather(*queued)

    calls, first, queued = asyncio.run(go())
    # 2 + 3 rows fit in 8; the 4-row request would make 9, so it goes in the batch after
    assert calls == [1, 5, 4]
    np.testing.assert_array_equal(first[0], rows(1, 100) * 2)
    for (out, _), (i, n) in zip(queued, enumerate((2, 3, 4)), strict=False):
        np.testing.assert_array_equal(out, rows(n, 10 * i) * 2)
    (_, a), (_, b2), _ = queued
    assert a["batch_rows"] == 5 and a["batch_requests"] == 2 and "cache_events" in a
    assert "cache_events" not in b2 and b2["extra"] == 1, "once-keys go to the first request of a batch only"


def test_a_fill_window_merges_requests_that_find_the_model_idle() -> None:
    async def go(wait_s: float):
        m = Model()
        b = RowBatcher(m.send, 32, wait_s=wait_s)
        await asyncio.gather(b.submit(rows(1)), b.submit(rows(2)))
        return m.calls

    assert asyncio.run(go(0.02)) == [3]
    assert asyncio.run(go(0.0)) == [1, 2]


def test_the_fill_window_ends_as_soon_as_the_batch_is_full() -> None:
    async def go():
        m = Model()
        b = RowBatcher(m.send, 4, wait_s=5.0)
        t = time.perf_counter()
        await asyncio.gather(b.submit(rows(2)), b.submit(rows(2)))
        return m.calls, time.perf_counter() - t

    calls, took = asyncio.run(go())
    assert calls == [4] and took < 1.0


def test_several_calls_may_run_at_once_and_a_large_request_runs_alone() -> None:
    async def go():
        m = Model(gated=True)
        b = RowBatcher(m.send, 4, max_inflight=2)
        futs = [asyncio.ensure_future(b.submit(rows(n))) for n in (1, 9, 1, 1)]
        await asyncio.sleep(0.01)
        running = list(m.calls)
        m.gate.set()
        await asyncio.gather(*futs)
        return running, m.calls

    running, calls = asyncio.run(go())
    assert running == [1, 9], "two calls in flight; the 9-row request is over max_rows and goes alone"
    assert calls == [1, 9, 2]


def test_a_full_queue_refuses_at_once_and_a_failed_call_fails_every_request_of_its_batch() -> None:
    async def go():
        m = Model(gated=True)
        b = RowBatcher(m.send, 32, max_queued=2)
        running = asyncio.ensure_future(b.submit(rows(1)))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(b.submit(rows(1))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="at capacity"):
            await b.submit(rows(1))

        async def broken(x):
            raise RuntimeError("model broke")

        b.send = broken
        m.gate.set()
        await running
        return await asyncio.gather(*waiting, return_exceptions=True)

    results = asyncio.run(go())
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]


def test_a_request_that_waits_longer_than_max_wait_s_in_the_queue_is_refused_then() -> None:
    """The admission time limit: queued requests get a fast 503 instead of waiting for a slow model;
    a request already sent is never refused, and the queue keeps working afterwards."""

    async def go():
        m = Model(gated=True)
        b = RowBatcher(m.send, 32, max_queued=100, max_wait_s=0.2)
        sent = asyncio.ensure_future(b.submit(rows(1)))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        queued = [asyncio.ensure_future(b.submit(rows(1))) for _ in range(5)]
        done = await asyncio.gather(*queued, return_exceptions=True)
        waited = time.perf_counter() - t0
        assert not sent.done() and b.pending == deque() and b.rows == 0
        m.gate.set()
        first = await sent
        again = await b.submit(rows(2))
        return done, waited, first, again, m.calls

    done, waited, first, again, calls = asyncio.run(go())
    assert all(isinstance(r, OverloadedError) and "waited 0.2s in its queue" in str(r) for r in done), done
    assert 0.15 < waited < 1.0
    assert first[0].shape == (1, 1) and again[0].shape == (2, 1)
    assert calls == [1, 2], "the refused requests never reached the model"
