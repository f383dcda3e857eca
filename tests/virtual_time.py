"""Virtual time for streaming-session tests: deterministic, no sleeps, no worker thread.

``run_virtual(main)`` runs a coroutine on an event loop whose clock is virtual: when nothing is
ready to run, the loop jumps to its next timer instead of waiting for it. ``VirtualWorker``
replaces an engine's worker thread: jobs run one after another, each on the loop's thread at the
virtual moment the worker takes it; a job lasts the compute time charged to the clock while it
runs (``VirtualClock.charge``, e.g. by a backend that models its speed), and its result arrives
when that much virtual time has passed. The session's reads of its clock inside a job see the
job's own progress, as they would on a real worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest

from engines.backends.base import Backend, ChunkInput, ChunkOutput

T = TypeVar("T")


class VirtualClock:
    """Seconds of virtual time; calling it reads the time (the session's ``clock=``)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._charged = 0.0  # compute time spent so far by the job now running

    def __call__(self) -> float:
        return self.now + self._charged

    def charge(self, seconds: float) -> None:
        """Spend compute time inside the running worker job."""
        self._charged += seconds


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that never waits: an idle wait moves the virtual clock on instead."""

    def __init__(self, clock: VirtualClock) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._inner.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("virtual time: every task waits and no timer is set (a hang)")
        self._clock.now += timeout
        return []

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_JumpingSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.now


class VirtualWorker(concurrent.futures.Executor):
    """One worker in virtual time (stands in for an engine's ``ThreadPoolExecutor``)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.jobs = 0
        self._queue: collections.deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = (
            collections.deque()
        )
        self._busy = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.append((future, lambda: fn(*args, **kwargs)))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._next)
        return future

    def _next(self) -> None:
        while self._queue:
            future, job = self._queue.popleft()
            if future.set_running_or_notify_cancel():
                self._run(future, job)
                return
        self._busy = False

    def _run(self, future: concurrent.futures.Future[Any], job: Callable[[], Any]) -> None:
        """Run ``job`` now; its outcome arrives once the compute it charged has passed."""
        self.jobs += 1
        self.clock._charged = 0.0
        result: Any = None
        error: Exception | None = None
        try:
            result = job()
        except Exception as exc:
            error = exc
        cost, self.clock._charged = self.clock._charged, 0.0

        def deliver() -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
            self._next()

        asyncio.get_running_loop().call_at(self.clock.now + cost, deliver)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._queue.clear()


class CostlyBackend:
    """A real backend whose every renderer call costs ``seconds_per_chunk`` of virtual compute,
    plus ``seconds_per_row`` for each session batched into it after the first (the default 0
    models a GPU, where a batch costs about what one chunk does)."""

    def __init__(
        self, inner: Backend, clock: VirtualClock, seconds_per_chunk: float, seconds_per_row: float = 0.0
    ) -> None:
        self.inner = inner
        self.clock = clock
        self.seconds_per_chunk = seconds_per_chunk
        self.seconds_per_row = seconds_per_row
        self.name = f"costly-{inner.name}"
        self.shape = inner.shape
        self.batches: list[int] = []  # the batch size of every call

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        rows = int(chunk.eroded.shape[0])
        self.batches.append(rows)
        self.clock.charge(self.seconds_per_chunk + self.seconds_per_row * (rows - 1))
        return self.inner.run(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def use_virtual_time(monkeypatch: pytest.MonkeyPatch, engine: Any, clock: VirtualClock) -> VirtualWorker:
    """Move ``engine``'s work onto a ``VirtualWorker`` (sessions given ``clock=clock`` then time their
    compute in virtual time too)."""
    worker = VirtualWorker(clock)
    monkeypatch.setattr(engine, "executor", worker)
    return worker


def run_virtual(main: Coroutine[Any, Any, T], clock: VirtualClock) -> T:
    """Run ``main`` to completion on a fresh ``VirtualLoop`` driven by ``clock``."""
    loop = VirtualLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
