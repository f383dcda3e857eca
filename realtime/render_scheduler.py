"""One scheduler per loaded avatar: the due chunks of all its live sessions, one batched call.

Live sessions hand their work to the scheduler instead of queueing it on the worker thread one
by one. While a batch runs, the sessions that become ready wait; when it ends, the next batch
takes all of them (it starts on the event loop's next turn, so the sessions just served that
have another chunk ready join it): each session's newly arrived audio is fed, chunks whose
deadline has passed are skipped (never queued: their frames' slots are gone) and counted, and
the chunks left are rendered together, at most ``max_batch`` of them, by
:func:`realtime.stream.render_chunks` — one backend call per network for the whole batch, the
per-frame work as batched tensors. Which chunks: the session served longest ago first (under
overload the skips take turns), then earliest deadline first; the batch stops growing where one
more row would make another chunk in it late (:mod:`realtime.batch_cost` learns what a row
costs: about nothing on a GPU, one session's share on a CPU). Chunks left out wait and go first
in the next batch. A batch grows with the load by itself: the longer a batch takes, the more
sessions are ready for the next one.

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
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from realtime.batch_cost import BatchCost
from realtime.stream import AvatarStream, StreamFrame, render_chunks

logger = logging.getLogger(__name__)
# Weight of the newest batch in the running estimate of a batch's compute time.
ESTIMATE_WEIGHT = 0.2
Samples = list[npt.NDArray[np.float32]]


class DueChunk(NamedTuple):
    """What a session has for the next batch.

    Attributes:
        skipped: frames of the chunks skipped as too late (not rendered).
        due_s: clock time the first frame of the chunk to render now is due (None: nothing to
            render now).
        deadline_s: clock time its last frame is due: rendered later, the chunk is useless.
        stream: the stream to render it from (held by the batch even if the session closes).
    """

    skipped: list[StreamFrame]
    due_s: float | None
    deadline_s: float | None
    stream: AvatarStream


class ScheduledSession(Protocol):
    """What the scheduler needs of a session (``realtime.session.StreamingSession``); every method
    runs on the worker thread."""

    def due_chunk(self, pending: Samples, end: bool, compute_s: float) -> DueChunk:
        """Feed the audio, skip the chunks that are too late (given a batch takes ``compute_s``)."""
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
    deadline_s: float | None = None
    stream: AvatarStream | None = None
    chosen: bool = False
    error: BaseException | None = None


class _Batch(NamedTuple):
    rows: int
    elapsed_s: float
    deferred: int  # due chunks left for the next batch


def _deadline(entry: _Entry) -> float:
    assert entry.deadline_s is not None
    return entry.deadline_s


@dataclass
class SchedulerStats:
    """Counters of one scheduler, updated on the event loop when a batch is delivered (readers on
    the loop see each batch's counters change together).

    Attributes:
        batches: batched renderer calls.
        chunks_rendered: chunks rendered (the sum of the batch sizes).
        batch_sizes: how many batches had each size.
        deferred: chunks ready but left for the next batch (over ``max_batch``, or one row too
            many for the others' deadlines).
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
        self.cost = BatchCost()
        self._waiting: list[_Entry] = []
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None  # where the batch in flight delivers
        self._served: dict[int, int] = {}  # id(session) -> number of the batch that last served it
        self._batch_number = 0  # batches started (on the worker)

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
        self._launch_soon(loop)
        return await entry.future

    def forget(self, session: ScheduledSession) -> None:
        """Drop a closed session's fairness record."""
        self._served.pop(id(session), None)

    def _order(self, due: list[_Entry]) -> None:
        """Sort ``due`` into the order the batch takes them: the session served longest ago first
        (under overload someone must skip: this makes them take turns), then earliest deadline."""
        due.sort(key=lambda entry: (self._served.get(id(entry.session), -1), _deadline(entry)))

    def _fill(self, due: list[_Entry], now: float) -> list[_Entry]:
        """The chunks of this batch, from ``due`` in its order: the batch stops growing where one
        more row would make a chunk in it late that would be on time without it. (A chunk that
        will be late is still rendered: shown a slot late, it beats repeating an older image.)"""
        chosen: list[_Entry] = []
        for entry in due:
            if len(chosen) == self.max_batch:
                break
            finish = now + self.cost.predict(len(chosen) + 1)
            on_time = now + self.cost.predict(len(chosen))
            if any(on_time <= _deadline(kept) < finish for kept in chosen):
                break
            chosen.append(entry)
        return chosen

    def _launch_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next batch on the loop's next turn, unless one is running or about to start.

        Not at once: the sessions a batch just served resume on that turn, and those with another
        chunk ready join this batch. Launched at once, a batch would hold only the sessions that
        waited, the served ones the next, and two sessions would alternate in batches of one.
        """
        if self._busy:
            return
        self._busy, self._loop = True, loop
        loop.call_soon(self._launch, loop)

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        entries, self._waiting = self._waiting, []
        if not entries:
            self._busy = False
            return
        done = loop.run_in_executor(self._executor(), self._batch, entries)
        done.add_done_callback(lambda outcome: self._deliver(loop, entries, outcome))

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, entries: list[_Entry], outcome: asyncio.Future[_Batch | None]
    ) -> None:
        self._busy = False
        failure = None if outcome.cancelled() else outcome.exception()
        batch = None if failure is not None or outcome.cancelled() else outcome.result()
        if batch is not None:
            self._record(batch)
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
            self._launch_soon(loop)

    def _record(self, batch: _Batch) -> None:
        """Count a batch and learn its cost (on the loop, before the next batch starts)."""
        stats, rows = self.stats, batch.rows
        weight = ESTIMATE_WEIGHT if stats.batches else 1.0
        stats.compute_s += weight * (batch.elapsed_s - stats.compute_s)
        self.cost.observe(rows, batch.elapsed_s)
        stats.batches += 1
        stats.chunks_rendered += rows
        stats.batch_sizes[rows] = stats.batch_sizes.get(rows, 0) + 1
        stats.deferred += batch.deferred

    def _batch(self, entries: list[_Entry]) -> _Batch | None:
        """On the worker: prepare every waiting session, render the chosen chunks as one batch.

        Returns:
            What the batch did (None: nothing was due).
        """
        for entry in entries:
            try:
                entry.frames, entry.due_s, entry.deadline_s, entry.stream = entry.session.due_chunk(
                    entry.pending, entry.end, self.stats.compute_s
                )
            except Exception as exc:
                entry.error = exc
        due = [entry for entry in entries if entry.due_s is not None and entry.error is None]
        if not due:
            return None
        clock = due[0].session.now
        started = clock()
        self._order(due)
        chosen = self._fill(due, started)
        for entry in chosen:
            entry.chosen = True
        streams = [entry.stream for entry in chosen if entry.stream is not None]
        assert len(streams) == len(chosen), "a due chunk comes with its stream"
        try:
            results = render_chunks(streams, [True] * len(chosen))
        except Exception:
            logger.exception("a batch of %d chunks failed; rendering them one by one", len(chosen))
            results = []
            for stream, entry in zip(streams, chosen, strict=True):
                try:
                    results.append(stream.render_chunk())
                except Exception as exc:
                    entry.error = exc
                    results.append([])
        elapsed = clock() - started
        self._batch_number += 1
        for entry, frames in zip(chosen, results, strict=True):
            if entry.error is not None:
                continue
            assert entry.due_s is not None
            entry.frames += frames
            self._served[id(entry.session)] = self._batch_number
            entry.session.rendered(entry.due_s)
        return _Batch(len(chosen), elapsed, len(due) - len(chosen))
