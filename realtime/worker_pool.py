"""The render workers of a server, seen from the process that terminates WebRTC.

``RenderPool`` starts ``workers`` render worker processes (``realtime.render_worker``: one per GPU,
or per group of CPU cores), each with every avatar loaded, and waits until all have measured
their avatars. A call is opened on one worker (the admission policy chooses which) and stays
there. Each ``RenderWorker`` talks to its process over one pipe through two threads: a writer, so
that the event loop never blocks on a full pipe (a worker that stops reading cannot stall the
server), and a reader, which copies frames out of the calls' rings and hands everything to the
calls' event loops. When a worker's process dies, its calls end with "render worker died" at
once, the other workers' calls notice nothing, and the pool starts a new process in its place
(after 1 s, longer while new ones keep dying).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Literal

from engines.errors import InputError, StableFaceError
from realtime.batch_cost import BatchCost
from realtime.frame_ring import FrameRing
from realtime.remote_session import RING_SLOTS, RemoteSession, RenderFailed, RenderWorkerLost
from realtime.settings import StreamSettings
from realtime.worker_messages import (
    AvatarInfo,
    CallClosed,
    CallEnded,
    Failed,
    Frame,
    FromWorker,
    OpenCall,
    Ready,
    Report,
    Shutdown,
    ToWorker,
    WorkerConfig,
)
from realtime.worker_placement import Placement, apply_placement, place_workers, server_cores, visible_gpus

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0  # loading and measuring the avatars (a TensorRT engine build takes minutes)
STOP_TIMEOUT_S = 2.0
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
HEALTHY_AFTER_S = 30.0  # a worker that ran this long before dying is restarted after the short delay
# A running worker reports every second from its event loop (which rendering never blocks): one
# silent this long is hung (stopped, deadlocked, swapping) and is killed, so its calls end.
HUNG_AFTER_S = 10.0
State = Literal["starting", "ready", "dead"]
StageObserver = Callable[[str, float], None]


def _run_worker(connection: Connection, config: WorkerConfig, number: int, placement: Placement) -> None:
    """The worker process's entry point: its placement first, then the models' libraries (imported
    there only: the server process, which imports this module, never loads torch or the backends)."""
    apply_placement(placement)
    from realtime.render_worker import run_worker

    run_worker(connection, config, number)


class RenderWorker:
    """One render worker process and its pipe.

    Args:
        number: its place in the pool.
        config: what it loads.
        placement: its GPU or cores.
        on_lost: called (on its reader thread) once the process has died or exited.
        on_stage_ms: called (on its reader thread) with each reported (stage, ms).
    """

    def __init__(
        self,
        number: int,
        config: WorkerConfig,
        placement: Placement,
        on_lost: Callable[[RenderWorker], None],
        on_stage_ms: StageObserver,
    ) -> None:
        self.number = number
        self.placement = placement
        self.state: State = "starting"
        self.failure: str | None = None
        self.avatars: dict[str, AvatarInfo] = {}
        self.costs: dict[str, BatchCost] = {}
        self.started = time.monotonic()
        self.last_heard = self.started
        self._on_lost = on_lost
        self._on_stage_ms = on_stage_ms
        self._calls: dict[int, RemoteSession] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopping = False
        self._gone = threading.Event()  # the process has exited and been reaped (by ``_lost``)
        self._outbox: queue.SimpleQueue[ToWorker | None] = queue.SimpleQueue()
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.process = context.Process(
            target=_run_worker,
            args=(child, config, number, placement),
            name=f"stableface-render-{number}",
            daemon=True,
        )
        self.process.start()
        child.close()  # so that the worker's death reads as the end of the pipe here
        for target, name in ((self._read, "reader"), (self._write, "writer")):
            threading.Thread(target=target, name=f"stableface-render-{number}-{name}", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the worker has loaded its avatars.

        Raises:
            InputError: the worker could not load them (its reason).
            StableFaceError: it died, or did not finish in ``timeout_s``.
        """
        if not self._ready.wait(timeout_s):
            raise StableFaceError(f"render worker {self.number} did not start within {timeout_s:.0f} s")
        if self.failure is not None:
            raise InputError(self.failure)
        if self.state != "ready":
            raise StableFaceError(f"render worker {self.number} died while starting (see its log above)")

    def open_calls(self) -> list[RemoteSession]:
        """Its calls (connected or connecting)."""
        with self._lock:
            return list(self._calls.values())

    def calls_by_avatar(self) -> dict[str, int]:
        """Its open calls (connected or connecting) by avatar."""
        counts = dict.fromkeys(self.avatars, 0)
        for call in self.open_calls():
            counts[call.info.name] = counts.get(call.info.name, 0) + 1
        return counts

    def open_call(self, avatar: str) -> RemoteSession:
        """A new call of ``avatar`` on this worker (on the event loop that will run the call).

        Raises:
            RenderWorkerLost: the worker is not running.
        """
        info = self.avatars[avatar]
        ring = FrameRing.create(info.frame_shape, RING_SLOTS)
        with self._lock:
            if self.state != "ready":
                ring.close()
                raise RenderWorkerLost("the render worker is restarting")
            number = next(self._numbers)
            call = RemoteSession(number, info, ring, self.send, self._forget)
            self._calls[number] = call
        self.send(OpenCall(number, avatar, ring.name, RING_SLOTS))
        return call

    def send(self, message: ToWorker) -> None:
        """Queue a message for the worker (never blocks)."""
        self._outbox.put(message)

    def _forget(self, number: int) -> None:
        with self._lock:
            self._calls.pop(number, None)

    def kill(self) -> None:
        """SIGKILL the process (tests; a crash looks the same); nothing once it has been reaped."""
        if self.process.pid is not None and not self._gone.is_set():
            os.kill(self.process.pid, signal.SIGKILL)

    def kill_if_hung(self, hung_after_s: float) -> None:
        """Kill a running worker that has sent nothing for ``hung_after_s`` (its death then ends its
        calls and starts another in its place)."""
        silent_s = time.monotonic() - self.last_heard
        if self.state == "ready" and not self._stopping and silent_s > hung_after_s:
            logger.error(
                "render worker %d (pid %s) silent for %.0f s: killing it", self.number, self.pid, silent_s
            )
            self.kill()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Tell the worker to close its calls and exit; kill it if it has not within ``timeout_s``."""
        self._stopping = True
        self.send(Shutdown())
        self._outbox.put(None)
        if not self._gone.wait(timeout_s):
            logger.warning("render worker %d did not exit within %.0f s: killed", self.number, timeout_s)
            self.kill()
            self._gone.wait(timeout_s)

    # ------------------------------------------------------------------ the pipe's threads

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._connection.send(message)
            except (OSError, ValueError):  # the worker is gone: the reader reports it
                return

    def _read(self) -> None:
        while True:
            try:
                message: FromWorker = self._connection.recv()
            except (EOFError, OSError):
                break
            self.last_heard = time.monotonic()
            self._dispatch(message)
        self._lost()

    def _dispatch(self, message: FromWorker) -> None:
        if isinstance(message, Frame):
            with self._lock:  # a call closing on its loop waits for the copy out of its ring
                call = self._calls.get(message.call)
                if call is not None:
                    call.arrived(message)
        elif isinstance(message, Report):
            with self._lock:
                self.costs = message.costs
                calls = dict(self._calls)
            for number, snapshot in message.calls.items():
                if number in calls:
                    calls[number].reported(snapshot)
            for stage, ms in message.stage_ms:
                self._on_stage_ms(stage, ms)
        elif isinstance(message, CallEnded):
            with self._lock:
                call = self._calls.get(message.call)
            if call is not None:
                call.ended(RenderFailed(message.error) if message.error else None)
        elif isinstance(message, Ready):
            with self._lock:
                self.avatars = {info.name: info for info in message.avatars}
                self.costs = message.costs
                self.state = "ready"
            self._ready.set()
        elif isinstance(message, Failed):
            self.failure = message.reason
        elif isinstance(message, CallClosed):
            pass

    def _lost(self) -> None:
        with self._lock:
            self.state = "dead"
            calls, self._calls = list(self._calls.values()), {}
        self._ready.set()
        self._outbox.put(None)
        # The one place that waits for the process: two threads reaping one child race (the
        # loser sees it "alive" after it has gone, and its pid may already be another's).
        self.process.join(1.0)
        self._gone.set()
        if calls and not self._stopping:
            logger.error(
                "render worker %d (pid %s) died with %d calls (exit code %s): ending them",
                self.number,
                self.pid,
                len(calls),
                self.process.exitcode,
            )
        for call in calls:
            call.ended(RenderWorkerLost("render worker died"))
        self._on_lost(self)


class RenderPool:
    """A server's render workers.

    Args:
        config: what every worker loads.
        workers: how many worker processes.
        hung_after_s: a running worker silent this long is killed (and replaced).
    """

    def __init__(self, config: WorkerConfig, workers: int = 1, hung_after_s: float = HUNG_AFTER_S) -> None:
        if workers < 1:
            raise InputError("a server needs at least one render worker")
        self.config = config
        self.avatars: dict[str, AvatarInfo] = {}
        self.default = ""
        self.restarts = 0
        self._closing = False
        self._lock = threading.Lock()
        self._delays = [RESTART_DELAY_S] * workers
        self._stage_observers: list[StageObserver] = []
        self.placements = place_workers(workers, server_cores(), visible_gpus())
        self.workers = [self._spawn(number) for number in range(workers)]
        self._hung_after_s = hung_after_s
        self._stopped = threading.Event()
        threading.Thread(target=self._watch, name="stableface-render-watch", daemon=True).start()

    @classmethod
    def start(
        cls,
        avatars: list[str],
        backend: str = "auto",
        stream_settings: StreamSettings | None = None,
        max_batch: int | None = None,
        measure: bool = True,
        workers: int = 1,
        hung_after_s: float = HUNG_AFTER_S,
    ) -> RenderPool:
        """Start the workers and wait until every one has loaded (and measured) the avatars.

        Raises:
            InputError: an avatar cannot be loaded (the workers are stopped again).
        """
        config = WorkerConfig(
            tuple(avatars),
            backend,
            stream_settings or StreamSettings(),
            max_batch,
            measure,
            logging.getLogger().getEffectiveLevel(),
        )
        pool = cls(config, workers, hung_after_s)
        try:
            for worker in pool.workers:
                worker.wait_ready()
        except BaseException:
            pool.close()
            raise
        pool.avatars = dict(pool.workers[0].avatars)
        pool.default = next(iter(pool.avatars))
        return pool

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self._hung_after_s / 4)):
            for worker in list(self.workers):
                worker.kill_if_hung(self._hung_after_s)

    def _spawn(self, number: int) -> RenderWorker:
        return RenderWorker(
            number, self.config, self.placements[number], self._worker_lost, self._observe_stage
        )

    def observe_stages(self, observer: StageObserver) -> None:
        """Have ``observer`` called (on a reader thread) with every (stage, ms) the workers report."""
        self._stage_observers.append(observer)

    def stop_observing(self, observer: StageObserver) -> None:
        if observer in self._stage_observers:
            self._stage_observers.remove(observer)

    def _observe_stage(self, stage: str, ms: float) -> None:
        for observer in list(self._stage_observers):
            observer(stage, ms)

    def get(self, name: str | None) -> AvatarInfo:
        """Avatar ``name`` (None: the default).

        Raises:
            InputError: no such avatar here.
        """
        key = self.default if name is None else name
        if key not in self.avatars:
            raise InputError(f"unknown avatar {name!r}; this server has: {', '.join(self.avatars)}")
        return self.avatars[key]

    def describe(self) -> list[dict[str, object]]:
        """Name, latency and backend of every avatar (for clients)."""
        return [
            {
                "name": name,
                "default": name == self.default,
                "latency_ms": info.latency_ms,
                "backend": info.backend,
            }
            for name, info in self.avatars.items()
        ]

    def health(self) -> list[dict[str, object]]:
        """Each worker's process, state and calls."""
        return [
            {
                "worker": w.number,
                "pid": w.pid,
                "state": w.state,
                "calls": sum(w.calls_by_avatar().values()),
                "cores": list(w.placement.cores) if w.placement.cores is not None else None,
                "gpu": w.placement.gpu,
            }
            for w in self.workers
        ]

    # ------------------------------------------------------------------ restarts

    def _worker_lost(self, worker: RenderWorker) -> None:
        """On the dead worker's reader thread: start another in its place, unless closing."""
        if self._closing or self.workers[worker.number] is not worker:
            return
        number = worker.number
        ran_s = time.monotonic() - worker.started
        delay = RESTART_DELAY_S if ran_s > HEALTHY_AFTER_S else self._delays[number]
        self._delays[number] = min(MAX_RESTART_DELAY_S, 2 * delay)
        logger.warning("render worker %d: starting a new one in %.0f s", number, delay)
        timer = threading.Timer(delay, self._restart, (number,))
        timer.daemon = True
        timer.start()

    def _restart(self, number: int) -> None:
        with self._lock:
            if self._closing:
                return
            worker = self._spawn(number)
            self.workers[number] = worker
            self.restarts += 1
        try:
            worker.wait_ready()
        except StableFaceError as exc:  # its death schedules the next attempt
            if not self._closing:
                logger.error("render worker %d did not restart: %s", number, exc)
                worker.kill()  # one stuck loading would otherwise never be replaced
            return
        self._delays[number] = RESTART_DELAY_S
        logger.info("render worker %d restarted (pid %s)", number, worker.pid)

    async def wait_all_ready(self, timeout_s: float) -> None:
        """Wait (polling) until every worker is ready again (tests, after a kill)."""
        deadline = time.monotonic() + timeout_s
        while any(w.state != "ready" for w in self.workers):
            if time.monotonic() > deadline:
                raise StableFaceError(f"the render workers were not all ready within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    def close(self) -> None:
        """Stop every worker (their calls end)."""
        with self._lock:
            self._closing = True
        self._stopped.set()
        for worker in self.workers:
            worker.stop()
