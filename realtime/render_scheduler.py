"""One scheduler per loaded avatar: the due chunks of all its live sessions, one batched call.

Live sessions hand their work to the scheduler instead of queueing it on the worker thread one by
one. While a batch runs, the sessions that become ready wait; when it ends, the next batch takes
all of them: each session's newly arrived audio is fed, chunks whose deadline has passed are
skipped (never queued: their frames' slots are gone) and counted, and the chunks left are ordered
earliest deadline first (ties: the session served longest ago) and rendered together, at most
``max_batch`` of them, by :func:`realtime.stream.render_chunks` — one backend call per network for
the whole batch, the per-frame work as batched tensors. Sessions beyond ``max_batch`` stay
waiting and go first in the next batch. A batch grows with the load by itself: the longer a
batch takes, the more sessions are ready for the next one.

A session's frames are the same whether it was batched with others or alone. When a batched call
fails, its sessions are rendered again one by one, so a failure ends only the session that
caused it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from realtime.stream import AvatarStream, StreamFrame, render_chunks

logger = logging.getLogger(__name__)
# Weight of the newest batch in the running estimate of a batch's compute time.
ESTIMATE_WEIGHT = 0.2
Samples = list[npt.NDArray[np.float32]]


class ScheduledSession(Protocol):
    """What the scheduler needs of a session (``realtime.session.StreamingSession``); every method
    runs on the worker thread."""

    def due_chunk(
        self, pending: Samples, end: bool, compute_s: float
    ) -> tuple[list[StreamFrame], float | None]:
        """Feed the audio, skip the chunks that are too late (given a batch takes ``compute_s``);
        the skipped frames and the due time (clock seconds) of the chunk to render now, or None."""
        ...

    def stream(self) -> AvatarStream:
        """The session's stream (exists once ``due_chunk`` ran)."""
        ...

    def rendered(self, due_s: float) -> None:
        """Bookkeeping after its chunk (due at ``due_s``) was rendered."""
        ...

    def now(self) -> float:
        """The session's clock."""
        ...


@dataclass
class _Entry:
    session: ScheduledSession
    pending: Samples
    end: bool
    future: asyncio.Future[list[StreamFrame]]
    frames: list[StreamFrame] = field(default_factory=list)
    due_s: float | None = None
    chosen: bool = False
    error: BaseException | None = None


@dataclass
class SchedulerStats:
    """Counters of one scheduler.

    Attributes:
        batches: batched renderer calls.
        chunks_rendered: chunks rendered (the sum of the batch sizes).
        batch_sizes: how many batches had each size.
        deferred: chunks ready but left for the next batch (over ``max_batch``).
        compute_s: running estimate of one batch's compute time.
    """

    batches: int = 0
    chunks_rendered: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    deferred: int = 0
    compute_s: float = 0.0


class RenderScheduler:
    """Batches the live sessions of one engine onto its worker.

    Args:
        executor: returns the engine's worker (read at each batch, so tests can swap it).
        max_batch: most chunks per batch (the backend's ``max_batch``).
    """

    def __init__(self, executor: Callable[[], Executor], max_batch: int) -> None:
        self._executor = executor
        self.max_batch = max_batch
        self.stats = SchedulerStats()
        self._waiting: list[_Entry] = []
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None  # where the batch in flight delivers
        self._served: dict[int, int] = {}  # id(session) -> number of the batch that last served it

    async def render(self, session: ScheduledSession, pending: Samples, end: bool) -> list[StreamFrame]:
        """Feed ``pending`` audio to the session and render its due chunk in the next batch.

        Returns:
            The session's frames from this batch: skipped chunks' frames (no images) and its
            rendered chunk's, or none when it had nothing due (or waits for the next batch).

        Raises:
            Exception: what the session's own work raised (other sessions are unaffected).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop and self._loop is not None and self._loop.is_closed():
            # a batch started on a loop that has closed cannot deliver: its sessions are gone
            self._busy, self._waiting = False, []
        entry = _Entry(session, pending, end, loop.create_future())
        self._waiting.append(entry)
        if not self._busy:
            self._launch(loop)
        return await entry.future

    def forget(self, session: ScheduledSession) -> None:
        """Drop a closed session's fairness record."""
        self._served.pop(id(session), None)

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        entries, self._waiting = self._waiting, []
        self._busy, self._loop = True, loop
        done = loop.run_in_executor(self._executor(), self._batch, entries)
        done.add_done_callback(lambda outcome: self._deliver(loop, entries, outcome))

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, entries: list[_Entry], outcome: asyncio.Future[None]
    ) -> None:
        self._busy = False
        failure = None if outcome.cancelled() else outcome.exception()
        deferred: list[_Entry] = []
        for entry in entries:
            if entry.future.done():  # the session was closed meanwhile
                continue
            error = entry.error or failure
            if error is not None:
                entry.future.set_exception(error)
            elif entry.due_s is not None and not entry.chosen:
                # over max_batch: first in the next batch, its audio already fed
                entry.pending, entry.end, entry.due_s = [], False, None
                deferred.append(entry)
            else:
                entry.future.set_result(entry.frames)
        self._waiting = deferred + self._waiting
        if self._waiting:
            self._launch(loop)

    def _batch(self, entries: list[_Entry]) -> None:
        """On the worker: prepare every waiting session, render the chosen chunks as one batch."""
        for entry in entries:
            try:
                entry.frames, entry.due_s = entry.session.due_chunk(
                    entry.pending, entry.end, self.stats.compute_s
                )
            except Exception as exc:
                entry.error = exc
        due = [entry for entry in entries if entry.due_s is not None and entry.error is None]
        due.sort(key=lambda entry: (entry.due_s or 0.0, self._served.get(id(entry.session), -1)))
        chosen = due[: self.max_batch]
        self.stats.deferred += len(due) - len(chosen)
        if not chosen:
            return
        for entry in chosen:
            entry.chosen = True
        clock = chosen[0].session.now
        started = clock()
        try:
            results = render_chunks([entry.session.stream() for entry in chosen], [True] * len(chosen))
        except Exception:
            logger.exception("a batch of %d chunks failed; rendering them one by one", len(chosen))
            results = []
            for entry in chosen:
                try:
                    results.append(entry.session.stream().render_chunk())
                except Exception as exc:
                    entry.error = exc
                    results.append([])
        elapsed = clock() - started
        stats = self.stats
        weight = ESTIMATE_WEIGHT if stats.batches else 1.0
        stats.compute_s += weight * (elapsed - stats.compute_s)
        stats.batches += 1
        stats.chunks_rendered += len(chosen)
        stats.batch_sizes[len(chosen)] = stats.batch_sizes.get(len(chosen), 0) + 1
        for entry, frames in zip(chosen, results, strict=True):
            if entry.error is not None:
                continue
            assert entry.due_s is not None
            entry.frames += frames
            self._served[id(entry.session)] = stats.batches
            entry.session.rendered(entry.due_s)
