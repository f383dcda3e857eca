"""What the server process and its render workers tell each other over a worker's pipe.

Every message is an immutable value: nothing crosses the process boundary that either side
changes afterwards. Images do not travel here (they go through a call's ``FrameRing``); a
``Frame`` message only says which frame is in the ring, with its 40 ms of audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from realtime.batch_cost import BatchCost
from realtime.settings import StreamSettings

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class WorkerConfig:
    """How a render worker loads its avatars.

    Attributes:
        avatars: ``--avatar`` values (``default``, ``PATH``, ``NAME=PATH``).
        backend: the backend name (``auto``, ``torch``, ``onnxruntime-cpu``, ...).
        stream_settings: default stream settings of every call.
        max_batch: most calls per batched renderer call.
        measure: measure each avatar's batch cost before reporting ready.
        log_level: the server's logging level (the worker logs to the same stderr).
    """

    avatars: tuple[str, ...]
    backend: str
    stream_settings: StreamSettings
    max_batch: int | None
    measure: bool
    log_level: int = 30


@dataclass(frozen=True)
class AvatarInfo:
    """What the server needs to know of an avatar a worker has loaded.

    Attributes:
        name: the name clients choose it by.
        latency_ms: its output delay.
        backend: the backend's name.
        device: where it renders (``cpu``, ``cuda:0``).
        chunk_frames, max_batch: the backend's streaming shape.
        frame_shape: (H, W, 3) of its output frames.
    """

    name: str
    latency_ms: float
    backend: str
    device: str
    chunk_frames: int
    max_batch: int
    frame_shape: tuple[int, int, int]


# ---------------------------------------------------------------- server -> worker


@dataclass(frozen=True)
class OpenCall:
    """Start a call's session on ``avatar``; its frames go to the ring named ``ring``."""

    call: int
    avatar: str
    ring: str
    slots: int


@dataclass(frozen=True)
class CallAudio:
    """16 kHz mono float32 samples (S,) of a call, in arrival order."""

    call: int
    samples: FloatArray


@dataclass(frozen=True)
class StartCall:
    """Render the warm-up and start the call's output clock."""

    call: int


@dataclass(frozen=True)
class CloseCall:
    call: int


@dataclass(frozen=True)
class Shutdown:
    """Close every call and exit."""


# ---------------------------------------------------------------- worker -> server


@dataclass(frozen=True)
class Ready:
    """The worker has loaded (and measured) its avatars."""

    avatars: tuple[AvatarInfo, ...]
    costs: dict[str, BatchCost]


@dataclass(frozen=True)
class Failed:
    """The worker could not start: a message for the operator."""

    reason: str


@dataclass(frozen=True)
class Frame:
    """Output frame ``index`` of a call is in its ring (``lost`` frames were not written).

    Attributes:
        audio: (640,) float32 samples that play with it.
        skipped: the slot's own frame was not rendered in time (an earlier image repeats).
        lag_ms: how far the image shown lags its slot.
    """

    call: int
    index: int
    audio: FloatArray
    skipped: bool
    lag_ms: float


@dataclass(frozen=True)
class CallEnded:
    """A call's output ended: its input ended, or it failed with ``error``."""

    call: int
    error: str | None


@dataclass(frozen=True)
class CallClosed:
    call: int


@dataclass(frozen=True)
class Report:
    """Once a second: each avatar's batch cost, each call's counters, the stage times since the
    last report."""

    costs: dict[str, BatchCost]
    calls: dict[int, dict[str, object]]
    stage_ms: tuple[tuple[str, float], ...]


ToWorker = OpenCall | CallAudio | StartCall | CloseCall | Shutdown
FromWorker = Ready | Failed | Frame | CallEnded | CallClosed | Report
