"""The deterministic heart of streaming: a continuous 16 kHz sample stream in, rendered frames out.

``AvatarStream`` knows no clocks. Frames are cut into fixed chunks of C frames, so the result is
a function of the sample sequence only, whatever the sizes of the pushes (the equivalence test).
For chunk ``[t0, t0 + C)`` with look-ahead L (frame e = t0 + C - 1 + L is the newest whose audio
is needed):

1. audio-to-expression over the last A frames of normalised log-mel up to e (silence before the
   start) → normalised mouth parameters up to e; those after the chunk are provisional (they saw
   less look-ahead) and serve only as smoothing taps of this chunk;
2. the voice gate blends towards the avatar's closed-mouth parameters where the audio is silent
   (attack/release ramps, so the mouth closes naturally and reopens without a jump);
3. causal adaptive smoothing: weights from the last W parameter frames, Eq. 1 over the face
   shapes of frames t + L - K + 1 .. t + L, rasterised with the reference frame's pose and upper
   face (reference played ping-pong from the start of the stream);
4. the renderer on the chunk with the cached encoded features of the P previous frames;
5. paste-back into the full reference frame.

The stream starts with ``warmup_frames`` frames of silence (at least P, so the renderer's cache
is filled by real frames), numbered negative: frame 0 is the first frame of pushed audio.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from engines.avatar_frames import AvatarFrames
from engines.backends.base import Backend, ChunkInput
from engines.bundle import AvatarBundle
from engines.device_frames import DeviceFrames
from engines.timebase import SAMPLES_PER_FRAME
from engines.torch_threads import one_cpu_thread
from realtime.features import FrameFeatures, FrameHistory
from realtime.settings import StreamSettings

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
IndexArray = npt.NDArray[np.int64]
# The mouth starts to open one frame before the sound (as speakers do) and stays open one frame
# after it; more anticipation would show as lips leading the audio.
GATE_LOOKAHEAD_FRAMES = 1
GATE_SNAP = 0.01
STAGES = ("features", "audio2expression", "smoothing", "raster", "renderer", "paste")


@dataclass
class StreamFrame:
    """One frame of the stream.

    Attributes:
        index: frame number on the input timeline (0 = the first frame of pushed audio).
        image: (H, W, 3) uint8 RGB, or None when the chunk was skipped (show the previous one).
        reference_index: the reference frame it was played over.
        inner_lip_area: area inside the inner-lip ring of the mouth geometry it renders (canonical
            units).
        voice: the voice gate, 0 (silence, closed mouth) .. 1 (speech).
    """

    index: int
    image: ImageRGB | None
    reference_index: int
    inner_lip_area: float
    voice: float


@dataclass
class StageTimes:
    """Milliseconds per chunk spent in each stage (recent chunks).

    Attributes:
        observer: called with (stage, ms) for every measurement (metrics); on the worker thread.
    """

    recent: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    keep: int = 500
    observer: Callable[[str, float], None] | None = None

    def add(self, stage: str, started: float) -> float:
        """Record the time since ``started`` (``time.perf_counter``); returns now."""
        now = time.perf_counter()
        self.record(stage, 1000 * (now - started))
        return now

    def record(self, stage: str, elapsed_ms: float) -> None:
        values = self.recent[stage]
        values.append(elapsed_ms)
        if self.observer is not None:
            self.observer(stage, elapsed_ms)
        if len(values) > 2 * self.keep:
            del values[: self.keep]


@dataclass
class _ChunkJob:
    """One stream's chunk on its way through a batch.

    Attributes:
        stream: whose chunk it is.
        render: False to skip the renderer (frames without images).
        t0, last: its first frame and the newest frame whose audio it uses (internal timeline).
        references: (C,) reference frame of each of its frames.
        params, gates, raw: per frame t0..last: normalised mouth parameters, voice gate, raw
            mouth parameters (face-model units).
        weights: (C + L, K) causal smoothing weights from t0 on (None without smoothing).
    """

    stream: AvatarStream
    render: bool
    t0: int
    last: int
    references: list[int]
    params: dict[int, FloatArray] = field(default_factory=dict)
    gates: dict[int, float] = field(default_factory=dict)
    raw: dict[int, FloatArray] = field(default_factory=dict)
    weights: FloatArray | None = None


class AvatarStream:
    """Turns one session's audio into rendered frames, chunk by chunk, on the caller's thread.

    Args:
        bundle: the avatar.
        frames: its per-frame helper (shared by the sessions of one worker thread).
        device_frames: its batched per-frame work on the backend's device (shared alike).
        backend: the inference backend (its shapes fix C, P and the windows).
        settings: stream settings (loudness gate, normalisation).
        warmup_frames: silent frames before the first pushed sample (at least P).
    """

    def __init__(
        self,
        bundle: AvatarBundle,
        frames: AvatarFrames,
        device_frames: DeviceFrames,
        backend: Backend,
        settings: StreamSettings,
        warmup_frames: int,
    ) -> None:
        shape = backend.shape
        self.bundle, self.frames, self.backend, self.settings = bundle, frames, backend, settings
        self.device_frames = device_frames
        self.chunk = shape.chunk_frames
        self.past = shape.past_frames
        self.lookahead = bundle.config.audio.lookahead_frames
        smoothing = bundle.networks.smoothing
        self.offsets = smoothing.offsets(causal=True)
        self.use_smoothing = bundle.config.use_smoothing
        self.warmup = max(warmup_frames, self.past)
        self._keep = max(shape.audio_frames, shape.smoothing_frames) + self.lookahead + 2
        self.features = FrameFeatures(
            bundle.audio_stats, settings.normalisation_time_s, settings.silence_dbfs
        )
        self.rest = (frames.rest_mouth / frames.mouth_std).astype(np.float32)
        self._params = FrameHistory()  # final normalised mouth parameters per frame
        self._gate = FrameHistory()
        self._shapes: dict[int, torch.Tensor] = {}  # final face shapes of recent frames (4, S, S)
        size = shape.feature_size
        self._cache = torch.zeros(
            (1, self.past, shape.feature_channels, size, size), device=device_frames.device
        )
        self._next = 0  # next chunk's first frame, on the internal timeline (warm-up included)
        self.times = StageTimes()
        self.samples_pushed = 0
        self.features.push(np.zeros(self.warmup * SAMPLES_PER_FRAME, np.float32))

    # ------------------------------------------------------------------ input

    def push(self, samples: FloatArray) -> None:
        """Append 16 kHz mono float32 samples to the stream."""
        started = time.perf_counter()
        self.features.push(np.ascontiguousarray(samples, dtype=np.float32))
        self.samples_pushed += len(samples)
        self.times.add("features", started)

    def finish(self) -> None:
        """End of input: pad with silence so every frame holding pushed audio can be rendered."""
        frames = math.ceil(self.samples_pushed / SAMPLES_PER_FRAME) + self.warmup
        chunks = math.ceil(frames / self.chunk)
        needed = (chunks * self.chunk + self.lookahead + 1) * SAMPLES_PER_FRAME
        have = (self.warmup * SAMPLES_PER_FRAME) + self.samples_pushed
        self.features.push(np.zeros(max(0, needed - have), np.float32))

    # ------------------------------------------------------------------ chunks

    @property
    def next_frame(self) -> int:
        """Input-timeline index of the next chunk's first frame."""
        return self._next - self.warmup

    def chunk_ready(self) -> bool:
        """Whether the audio of the next chunk and its look-ahead is in."""
        return self.chunks_ready() > 0

    def chunks_ready(self) -> int:
        """How many chunks, from the next one on, have all their audio."""
        return max(0, (self.features.frames - self.lookahead - self._next) // self.chunk)

    def render_chunk(self, render: bool = True) -> list[StreamFrame]:
        """Render the next chunk alone (``render=False``: skip the renderer, return frames without
        images); the same as a batch of one (see ``render_chunks``).

        Raises:
            RuntimeError: the chunk's audio is not in yet (check ``chunk_ready``).
        """
        return render_chunks([self], [render])[0]

    def _begin(self, render: bool) -> _ChunkJob:
        if not self.chunk_ready():
            raise RuntimeError("render_chunk before the chunk's audio is in")
        t0 = self._next
        last = t0 + self.chunk - 1 + self.lookahead
        references = [self._reference(t) for t in range(t0, t0 + self.chunk)]
        return _ChunkJob(self, render, t0, last, references)

    def _expression_rows(self, job: _ChunkJob) -> FloatArray:
        """(audio_frames, A) normalised log-mel rows of the expression window ending at ``last``."""
        window = self.backend.shape.audio_frames
        rows = [
            self.features.rows[t] if t >= self.features.rows.start else self.features.silence_row
            for t in range(job.last - window + 1, job.last + 1)
        ]
        return np.stack(rows)

    def _apply_expressions(self, job: _ChunkJob, predicted: FloatArray) -> None:
        """Gate the predicted (audio_frames, Em) mouth parameters: normalised parameters and gate
        values of frames t0..last."""
        window = self.backend.shape.audio_frames
        settings = self.settings
        attack = 1.0 - math.exp(-1.0 / settings.gate_attack_frames)
        release = 1.0 - math.exp(-1.0 / settings.gate_release_frames)
        t0, last = job.t0, job.last
        gate_value = float(self._gate[t0 - 1][0]) if t0 > 0 else 0.0
        for t in range(t0, last + 1):
            ahead = range(t - 1, min(t + GATE_LOOKAHEAD_FRAMES, last) + 1)
            loud = max(
                float(self.features.loudness[u][0]) for u in ahead if u >= self.features.loudness.start
            )
            target = 1.0 if loud > settings.silence_dbfs else 0.0
            gate_value += (attack if target > gate_value else release) * (target - gate_value)
            if abs(gate_value - target) < GATE_SNAP:  # the ramps end: a still, exactly closed mouth
                gate_value = target
            job.gates[t] = gate_value
            job.params[t] = (
                gate_value * predicted[window - 1 - (last - t)] + (1 - gate_value) * self.rest
            ).astype(np.float32)
        job.raw = {t: job.params[t] * self.frames.mouth_std for t in job.params}

    def _smoothing_rows(self, job: _ChunkJob) -> FloatArray:
        """(smoothing_frames, Em) normalised mouth parameters of the smoothing window."""
        frames = range(job.last - self.backend.shape.smoothing_frames + 1, job.last + 1)
        return np.stack(
            [
                job.params[t] if t >= job.t0 else (self._params[t] if t >= self._params.start else self.rest)
                for t in frames
            ]
        )

    def _apply_smoothing(self, job: _ChunkJob, weights: FloatArray) -> None:
        """Keep the (count + L, K) rows of the window's (smoothing_frames, K) weights from t0 on."""
        window = self.backend.shape.smoothing_frames
        job.weights = weights[window - 1 - (job.last - job.t0) :]

    def _shape_requests(self, job: _ChunkJob) -> list[tuple[int, int, FloatArray]]:
        """(frame, reference frame, raw mouth parameters) of the face shapes to rasterise for the
        chunk: its own frames (and their smoothing taps not rasterised by an earlier chunk)."""
        t0, count = job.t0, self.chunk
        if self.use_smoothing:
            frames = range(t0 + self.offsets[0], t0 + count - 1 + self.offsets[-1] + 1)
        else:
            frames = range(t0, t0 + count)
        requests: dict[int, tuple[int, int, FloatArray]] = {}
        for t in frames:
            t = max(t, 0)
            if t in requests or (t not in job.raw and t in self._shapes):
                continue
            if t in job.raw:
                params = job.raw[t]
            else:
                previous = self._params[t] if t >= self._params.start else self.rest
                params = previous * self.frames.mouth_std
            requests[t] = (t, self._reference(t), params)
        return list(requests.values())

    def _chunk_shapes(self, job: _ChunkJob, fresh: dict[int, torch.Tensor]) -> torch.Tensor:
        """(C, 4, S, S) (smoothed) face shapes of the chunk's frames from the fresh rasters and the
        cached ones of earlier frames (Eq. 1 with the causal weights)."""
        t0, count = job.t0, self.chunk

        def shape(t: int) -> torch.Tensor:
            t = max(t, 0)
            if t in fresh:
                return fresh[t]
            return self._shapes[t]

        if not self.use_smoothing:
            shapes = torch.stack([shape(t) for t in range(t0, t0 + count)])
        else:
            assert job.weights is not None
            taps = torch.stack(
                [torch.stack([shape(t + offset) for offset in self.offsets]) for t in range(t0, t0 + count)]
            )  # (C, K, 4, S, S)
            weights = torch.from_numpy(np.ascontiguousarray(job.weights[:count])).to(taps.device)
            with one_cpu_thread(taps.device):
                shapes = torch.einsum("ck,ckxyz->cxyz", weights, taps)
        for t in [t for t in fresh if t not in job.raw or t < t0 + count]:
            self._shapes[t] = fresh[t]
        return shapes

    def _finish(
        self,
        job: _ChunkJob,
        features: torch.Tensor | None,
        images: list[ImageRGB | None],
        inner_lip_areas: FloatArray,
    ) -> list[StreamFrame]:
        """Update the caches and histories after the chunk; its frames.

        Args:
            job: the chunk.
            features: (1, C, F, h, h) encoded features of its frames (None when skipped).
            images: (C,) its full frames, or None each when skipped.
            inner_lip_areas: (C,) mouth opening of its frames.
        """
        t0, count = job.t0, self.chunk
        if self.past:
            new = features if features is not None else self._cache[:, -1:].expand(-1, count, -1, -1, -1)
            self._cache = torch.cat([self._cache, new.to(self._cache.device, torch.float32)], dim=1)[
                :, -self.past :
            ]
        out = []
        for offset, t in enumerate(range(t0, t0 + count)):
            self._params.append(job.params[t])
            self._gate.append(np.array([job.gates[t]], np.float32))
            out.append(
                StreamFrame(
                    t - self.warmup,
                    images[offset],
                    job.references[offset],
                    float(inner_lip_areas[offset]),
                    job.gates[t],
                )
            )
        for t in list(self._shapes):
            if t < t0 + count - len(self.offsets):
                del self._shapes[t]
        self._next += count
        horizon = self._next - self._keep
        for history in (self.features, self._params, self._gate):
            history.forget_before(horizon)
        return out

    def _reference(self, frame: int) -> int:
        return int(self.frames.reference.ping_pong(1, start=frame)[0])


def render_chunks(streams: Sequence[AvatarStream], render: Sequence[bool]) -> list[list[StreamFrame]]:
    """Render the next chunk of each stream in one batch: one backend call per network for all of
    them, the per-frame work as batched tensor operations on the backend's device.

    A stream's frames do not depend on the others in the batch (the networks treat the batch rows
    independently), so batched and alone give the same frames.

    Args:
        streams: B streams of one engine (same backend and device frames), each with its next
            chunk ready; at most the backend's ``max_batch``.
        render: per stream, False to skip the renderer (its frames come back without images; its
            mouth parameters still advance).

    Returns:
        Per stream, its C frames.

    Raises:
        RuntimeError: a stream's chunk is not ready.
    """
    if not streams:
        return []
    backend = streams[0].backend
    # With the networks in another runtime on the CPU, torch only glues: on one thread, or its
    # OpenMP threads spin against the runtime's after each op (default avatar, one chunk on 2
    # cores, interleaved: p50 16.4 -> 15.4 ms, p99 23.6 -> 17.7 ms).
    glue = contextlib.nullcontext() if backend.name == "torch-cpu" else one_cpu_thread(backend.device)
    with glue:
        return _render_chunks(streams, render)


def _settle(device: torch.device) -> None:
    """Wait for the device's queued work, so that a stage's time is its own (a GPU returns before
    the work is done; without this the renderer's time would show up under paste)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _render_chunks(streams: Sequence[AvatarStream], render: Sequence[bool]) -> list[list[StreamFrame]]:
    first = streams[0]
    backend, device_frames = first.backend, first.device_frames
    started = time.perf_counter()
    jobs = [stream._begin(flag) for stream, flag in zip(streams, render, strict=True)]
    predicted = backend.expressions(np.stack([job.stream._expression_rows(job) for job in jobs]))
    for job, rows in zip(jobs, predicted, strict=True):
        job.stream._apply_expressions(job, rows)
    timings = {"audio2expression": time.perf_counter() - started}
    started = time.perf_counter()
    if first.use_smoothing:
        windows = np.stack([job.stream._smoothing_rows(job) for job in jobs])
        for job, weights in zip(jobs, backend.smoothing_weights(windows), strict=True):
            job.stream._apply_smoothing(job, weights)
    timings["smoothing"] = time.perf_counter() - started
    rendering = [job for job in jobs if job.render]
    outputs: dict[int, tuple[torch.Tensor | None, list[ImageRGB | None]]] = {}
    if rendering:
        started = time.perf_counter()
        requests = [job.stream._shape_requests(job) for job in rendering]
        flat = [request for job_requests in requests for request in job_requests]
        rasters = device_frames.face_shapes(
            np.array([reference for _, reference, _ in flat], np.int64),
            np.stack([params for _, _, params in flat]).astype(np.float32),
        )
        shapes, position = [], 0
        for job, job_requests in zip(rendering, requests, strict=True):
            fresh = {t: rasters[position + k] for k, (t, _, _) in enumerate(job_requests)}
            position += len(job_requests)
            shapes.append(job.stream._chunk_shapes(job, fresh))
        references = np.array([r for job in rendering for r in job.references], np.int64)
        eroded = device_frames.eroded(references)
        count = first.chunk
        _settle(device_frames.device)
        timings["raster"] = time.perf_counter() - started
        started = time.perf_counter()
        audio = np.stack(
            [
                np.stack([job.stream.features.rows[t] for t in range(job.t0, job.t0 + count)])
                for job in rendering
            ]
        )
        result = backend.run(
            ChunkInput(
                torch.cat([job.stream._cache for job in rendering]),
                eroded.reshape(len(rendering), count, *eroded.shape[1:]),
                torch.stack(shapes),
                audio,
            )
        )
        # the backend's own buffers: used (and the features copied) before its next call
        crops = torch.as_tensor(result.frames, device=device_frames.device)
        features = torch.as_tensor(result.features)
        _settle(device_frames.device)
        timings["renderer"] = time.perf_counter() - started
        started = time.perf_counter()
        images = _paste(device_frames, rendering, references, crops.flatten(0, 1))
        for row, job in enumerate(rendering):
            outputs[id(job)] = (features[row : row + 1], images[row * count : (row + 1) * count])
        timings["paste"] = time.perf_counter() - started
    areas = first.frames.inner_lip_areas(
        np.stack([job.raw[t] for job in jobs for t in range(job.t0, job.t0 + first.chunk)]),
        np.array([r for job in jobs for r in job.references], np.int64),
    ).reshape(len(jobs), first.chunk)
    results = []
    for job, job_areas in zip(jobs, areas, strict=True):
        skipped: list[ImageRGB | None] = [None] * first.chunk
        features_row, images = outputs.get(id(job), (None, skipped))
        results.append(job.stream._finish(job, features_row, images, job_areas))
        for stage, seconds in timings.items():
            if job.render or stage in ("audio2expression", "smoothing"):
                job.stream.times.record(stage, 1000 * seconds)
    return results


def _paste(
    device_frames: DeviceFrames, jobs: list[_ChunkJob], references: IndexArray, crops: torch.Tensor
) -> list[ImageRGB | None]:
    """(N,) host images of the jobs' N = B·C frames, pasted in one call per mark setting."""
    marks = np.repeat([job.stream.settings.ai_mark for job in jobs], jobs[0].stream.chunk)
    images: list[ImageRGB | None] = [None] * len(references)
    for mark in (False, True):
        rows = np.flatnonzero(marks == mark)
        if len(rows):
            pasted = device_frames.paste(references[rows], crops[torch.from_numpy(rows)], bool(mark))
            host = pasted.cpu().numpy()
            for k, row in enumerate(rows):
                images[row] = host[k]
    return images
