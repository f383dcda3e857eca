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

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engines.avatar_frames import AvatarFrames
from engines.backends.base import Backend, ChunkInput
from engines.bundle import AvatarBundle
from engines.timebase import SAMPLES_PER_FRAME
from realtime.features import FrameFeatures, FrameHistory
from realtime.settings import StreamSettings

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
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
        now = time.perf_counter()
        values = self.recent[stage]
        elapsed = 1000 * (now - started)
        values.append(elapsed)
        if self.observer is not None:
            self.observer(stage, elapsed)
        if len(values) > 2 * self.keep:
            del values[: self.keep]
        return now


class AvatarStream:
    """Turns one session's audio into rendered frames, chunk by chunk, on the caller's thread.

    Args:
        bundle: the avatar.
        frames: its per-frame helper (shared by the sessions of one worker thread).
        backend: the inference backend (its shapes fix C, P and the windows).
        settings: stream settings (loudness gate, normalisation).
        warmup_frames: silent frames before the first pushed sample (at least P).
    """

    def __init__(
        self,
        bundle: AvatarBundle,
        frames: AvatarFrames,
        backend: Backend,
        settings: StreamSettings,
        warmup_frames: int,
    ) -> None:
        shape = backend.shape
        self.bundle, self.frames, self.backend, self.settings = bundle, frames, backend, settings
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
        self._shapes: dict[int, FloatArray] = {}  # final face shapes of recent frames
        size = shape.feature_size
        self._cache = np.zeros((1, self.past, shape.feature_channels, size, size), np.float32)
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
        """Render the next chunk (``render=False``: skip the renderer, return frames without images).

        Raises:
            RuntimeError: the chunk's audio is not in yet (check ``chunk_ready``).
        """
        if not self.chunk_ready():
            raise RuntimeError("render_chunk before the chunk's audio is in")
        t0, count = self._next, self.chunk
        last = t0 + count - 1 + self.lookahead
        started = time.perf_counter()
        params, gate = self._mouth(t0, last)
        started = self.times.add("audio2expression", started)
        weights = self._smoothing_weights(t0, last, params)
        started = self.times.add("smoothing", started)
        references = [self._reference(t) for t in range(t0, t0 + count)]
        raw = {t: params[t] * self.frames.mouth_std for t in params}
        if render:
            shapes = self._smoothed_shapes(t0, count, raw, weights)
            started = self.times.add("raster", started)
            eroded = np.stack([self.frames.eroded(r) for r in references])[None]
            audio = np.stack([self.features.rows[t] for t in range(t0, t0 + count)])[None]
            result = self.backend.run(ChunkInput(self._cache, eroded, shapes[None], audio))
            # valid until the next backend call; used (and the features copied) before it
            crops, features = result.frames[0], result.features
            started = self.times.add("renderer", started)
        else:
            features = np.repeat(self._cache[:, -1:], count, axis=1) if self.past else self._cache
        if self.past:
            self._cache = np.concatenate([self._cache, features], axis=1)[:, -self.past :].copy()
        out = []
        for offset, t in enumerate(range(t0, t0 + count)):
            self._params.append(params[t])
            self._gate.append(np.array([gate[t]], np.float32))
            mark = self.settings.ai_mark
            image = self.frames.paste(references[offset], crops[offset], mark) if render else None
            opening = self.frames.inner_lip_area(raw[t], references[offset])
            out.append(StreamFrame(t - self.warmup, image, references[offset], opening, gate[t]))
        if render:
            self.times.add("paste", started)
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

    def _mouth(self, t0: int, last: int) -> tuple[dict[int, FloatArray], dict[int, float]]:
        """Normalised, gated mouth parameters and gate values of frames t0..last."""
        window = self.backend.shape.audio_frames
        rows = [
            self.features.rows[t] if t >= self.features.rows.start else self.features.silence_row
            for t in range(last - window + 1, last + 1)
        ]
        predicted = self.backend.expressions(np.stack(rows)[None])[0]
        settings = self.settings
        attack = 1.0 - math.exp(-1.0 / settings.gate_attack_frames)
        release = 1.0 - math.exp(-1.0 / settings.gate_release_frames)
        gate_value = float(self._gate[t0 - 1][0]) if t0 > 0 else 0.0
        params: dict[int, FloatArray] = {}
        gates: dict[int, float] = {}
        for t in range(t0, last + 1):
            ahead = range(t - 1, min(t + GATE_LOOKAHEAD_FRAMES, last) + 1)
            loud = max(
                float(self.features.loudness[u][0]) for u in ahead if u >= self.features.loudness.start
            )
            target = 1.0 if loud > settings.silence_dbfs else 0.0
            gate_value += (attack if target > gate_value else release) * (target - gate_value)
            if abs(gate_value - target) < GATE_SNAP:  # the ramps end: a still, exactly closed mouth
                gate_value = target
            gates[t] = gate_value
            params[t] = (
                gate_value * predicted[window - 1 - (last - t)] + (1 - gate_value) * self.rest
            ).astype(np.float32)
        return params, gates

    def _smoothing_weights(self, t0: int, last: int, params: dict[int, FloatArray]) -> FloatArray:
        """(count + L, K) causal smoothing weights of frames t0..last (rows for t0.. in order)."""
        if not self.use_smoothing:
            return np.zeros((0, len(self.offsets)), np.float32)
        window = self.backend.shape.smoothing_frames
        frames = range(last - window + 1, last + 1)
        mouth = np.stack(
            [
                params[t] if t >= t0 else (self._params[t] if t >= self._params.start else self.rest)
                for t in frames
            ]
        )
        weights: FloatArray = self.backend.smoothing_weights(mouth[None])[0][window - 1 - (last - t0) :]
        return weights

    def _shape(self, t: int, raw: dict[int, FloatArray]) -> FloatArray:
        t = max(t, 0)
        if t in raw:
            return self.frames.face_shape(self._reference(t), raw[t])
        if t not in self._shapes:
            previous = self._params[t] if t >= self._params.start else self.rest
            self._shapes[t] = self.frames.face_shape(self._reference(t), previous * self.frames.mouth_std)
        shape: FloatArray = self._shapes[t]
        return shape

    def _smoothed_shapes(
        self, t0: int, count: int, raw: dict[int, FloatArray], weights: FloatArray
    ) -> FloatArray:
        """(C, 4, S, S) (smoothed) face shapes of the chunk's frames."""
        if not self.use_smoothing:
            return np.stack([self._shape(t, raw) for t in range(t0, t0 + count)])
        low, high = t0 + self.offsets[0], t0 + count - 1 + self.offsets[-1]
        shapes = {t: self._shape(t, raw) for t in range(low, high + 1)}
        for t in range(t0, t0 + count):
            self._shapes[t] = shapes[t]
        out = [
            np.tensordot(
                weights[index], np.stack([shapes[t + offset] for offset in self.offsets]), axes=(0, 0)
            )
            for index, t in enumerate(range(t0, t0 + count))
        ]
        smoothed: FloatArray = np.stack(out).astype(np.float32)
        return smoothed
