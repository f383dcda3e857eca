"""A render worker: a process that owns the avatars' models and renders the calls of a server.

The server process (``realtime.worker_pool``) starts it with ``multiprocessing``'s spawn and talks
to it over one pipe (``realtime.worker_messages``). Here every call is a paced
``StreamingSession`` on the worker's own ``AvatarEngine`` (its render scheduler batches them);
each output frame's image goes into the call's shared-memory ``FrameRing`` and a ``Frame``
message follows with its audio. The worker's event loop owns every session: the thread that reads
the pipe only hands messages to it. The worker ends when told to, or when the pipe closes (the
server is gone); Ctrl-C is the server's to handle, not the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections import deque
from copy import deepcopy
from dataclasses import dataclass
from multiprocessing.connection import Connection

from engines.errors import InputError, StableFaceError
from realtime.avatars import AvatarCatalog, AvatarSpec
from realtime.batch_cost import BatchCost
from realtime.cost_probe import probe_batch_cost
from realtime.frame_ring import FrameRing
from realtime.memory import freeze_loaded_objects
from realtime.session import StreamingSession
from realtime.tasks import stop_task
from realtime.worker_messages import (
    AvatarInfo,
    CallAudio,
    CallClosed,
    CallEnded,
    CloseCall,
    Failed,
    Frame,
    FromWorker,
    OpenCall,
    Ready,
    Report,
    Shutdown,
    StartCall,
    ToWorker,
    WorkerConfig,
)

logger = logging.getLogger(__name__)
REPORT_INTERVAL_S = 1.0


def run_worker(connection: Connection, config: WorkerConfig, number: int) -> None:
    """The worker process's entry point: load, report ``Ready`` (or ``Failed``), serve, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=config.log_level, format=f"render-worker-{number} %(levelname)s %(name)s: %(message)s"
    )
    try:
        catalog = _load(config)
    except StableFaceError as exc:
        connection.send(Failed(str(exc)))
        return
    except Exception as exc:  # any failure to load is the operator's to read, once
        logger.exception("loading the avatars failed")
        connection.send(Failed(f"loading the avatars failed: {type(exc).__name__}: {exc}"))
        return
    freeze_loaded_objects()
    try:
        asyncio.run(_Worker(connection, catalog).run())
    finally:
        catalog.close()
    logging.shutdown()
    os._exit(0)  # nothing is left to save: skip tearing down the models' libraries object by object


def _load(config: WorkerConfig) -> AvatarCatalog:
    specs = [AvatarSpec.parse(text) for text in config.avatars]
    catalog = AvatarCatalog.load(specs, config.backend, config.stream_settings, config.max_batch)
    if config.measure:
        for engine in catalog.engines.values():
            probe_batch_cost(engine)
    return catalog


def describe(catalog: AvatarCatalog) -> tuple[AvatarInfo, ...]:
    """What the server needs to know of each loaded avatar, default first."""
    infos = []
    for name, engine in catalog.engines.items():
        shape = engine.backend.shape
        height, width = engine.frames.full_frame(0).shape[:2]
        infos.append(
            AvatarInfo(
                name=name,
                latency_ms=engine.latency_ms,
                backend=engine.backend.name,
                device=str(engine.backend.device),
                chunk_frames=shape.chunk_frames,
                max_batch=shape.max_batch,
                frame_shape=(int(height), int(width), 3),
            )
        )
    return tuple(infos)


@dataclass
class _Call:
    session: StreamingSession
    ring: FrameRing
    output: asyncio.Task[None] | None = None


class _Worker:
    """The worker's event loop side: its calls, by the number the server gave them."""

    def __init__(self, connection: Connection, catalog: AvatarCatalog) -> None:
        self.connection = connection
        self.catalog = catalog
        self.calls: dict[int, _Call] = {}
        self._stages: deque[tuple[str, float]] = deque(maxlen=10_000)  # appended on the render thread
        self._stop = asyncio.Event()

    def send(self, message: FromWorker) -> None:
        self.connection.send(message)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), name="stableface-worker-pipe", daemon=True).start()
        self.send(Ready(describe(self.catalog), self._costs()))
        reports = loop.create_task(self._report())
        await self._stop.wait()
        await stop_task(reports, "the worker's reports")
        await asyncio.gather(*(self._close(call) for call in list(self.calls)))

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pipe's reading thread: every message goes to the loop; a closed pipe stops the worker."""
        while True:
            try:
                message: ToWorker = self.connection.recv()
            except (EOFError, OSError):
                message = Shutdown()
            try:
                loop.call_soon_threadsafe(self._handle, message)
            except RuntimeError:  # the loop has ended
                return
            if isinstance(message, Shutdown):
                return

    def _handle(self, message: ToWorker) -> None:
        if isinstance(message, CallAudio):
            call = self.calls.get(message.call)
            if call is not None:
                # once the call's output has ended, nothing plays this audio
                with contextlib.suppress(InputError):
                    call.session.push_converted(message.samples)
        elif isinstance(message, OpenCall):
            self._open(message)
        elif isinstance(message, StartCall):
            call = self.calls.get(message.call)
            if call is not None and call.output is None:
                call.output = asyncio.get_running_loop().create_task(self._stream(message.call, call))
        elif isinstance(message, CloseCall):
            asyncio.get_running_loop().create_task(self._close(message.call))
        elif isinstance(message, Shutdown):
            self._stop.set()

    def _open(self, message: OpenCall) -> None:
        engine = self.catalog.get(message.avatar)
        height, width = engine.frames.full_frame(0).shape[:2]
        try:
            ring = FrameRing.attach(message.ring, (height, width, 3), message.slots)
        except FileNotFoundError:  # the call was closed before it reached the worker
            self.send(CallEnded(message.call, "the call's frame ring is gone"))
            return
        session = StreamingSession(
            engine, paced=True, on_stage_ms=lambda stage, ms: self._stages.append((stage, ms))
        )
        self.calls[message.call] = _Call(session, ring)

    async def _stream(self, number: int, call: _Call) -> None:
        """The call's paced frames into its ring, each announced with its audio."""
        try:
            async for frame in call.session.frames():
                call.ring.write(frame.index, frame.image)
                stats = call.session.stats
                self.send(Frame(number, frame.index, frame.audio, frame.skipped, stats.lag_ms))
        except Exception as exc:
            logger.error("call %d failed: %s: %s", number, type(exc).__name__, exc)
            self.send(CallEnded(number, f"rendering failed: {type(exc).__name__}"))
        else:
            self.send(CallEnded(number, None))

    async def _close(self, number: int) -> None:
        call = self.calls.pop(number, None)
        if call is None:
            return
        if call.output is not None:
            await stop_task(call.output, f"call {number}'s output")
        await call.session.close()
        call.ring.close()
        self.send(CallClosed(number))

    def _costs(self) -> dict[str, BatchCost]:
        return {name: deepcopy(engine.scheduler.cost) for name, engine in self.catalog.engines.items()}

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            stages = []
            while self._stages:
                stages.append(self._stages.popleft())
            calls = {number: call.session.stats.snapshot() for number, call in self.calls.items()}
            self.send(Report(self._costs(), calls, tuple(stages)))
