"""Settings of a streaming session, validated, with units in the field names."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

SAMPLE_RATE_HZ = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FPS
FRAME_MS = 1000 / FPS
FEATURE_MARGIN_MS = 7.5  # a frame's last log-mel window reaches 7.5 ms past the frame's end


class StreamSettings(BaseModel):
    """How a session turns live audio into paced video.

    Attributes:
        chunk_frames: C, frames rendered per call; None takes the avatar's streaming config.
        compute_allowance_ms: time granted to compute a chunk once its audio is in; part of the
            fixed output delay (frames not ready by then are skipped, never waited for). None
            takes the avatar's (``StreamingConfig.compute_allowance_ms``: sized for its networks).
        input_jitter_ms: how late live audio may arrive before the gap is filled with silence.
        max_input_ahead_ms: most audio buffered ahead of the output clock; more is dropped.
        silence_dbfs: frames quieter than this (RMS, dBFS) count as silence for the voice gate.
        gate_attack_frames, gate_release_frames: how fast the mouth follows speech onsets and
            closes after speech (frames of the gate's first-order ramp).
        normalisation_time_s: time constant of the running log-mel statistics (voiced frames only).
        max_skip_run_frames: frames a session may repeat in a row before it resynchronises.
        ai_mark: draw the "AI-generated" mark on every frame (``engines.ai_mark``).
        audio_lead_ms: how far ahead of its frame the delayed audio is sent. The Opus send path
            delays sound behind the lips (aiortc's resampler holds one 20 ms frame, libopus looks
            6.5 ms ahead), and a sound starts on average half a frame after the frame that first
            shows it: measured over a WebRTC loopback, the returned sound came 45 ms after the lips
            without a lead and 15 ms before them (p50) with 45 ms (docs/benchmarks.md). At most
            80 ms, well inside the pipeline delay, so the samples it reads have arrived.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_frames: int | None = Field(None, ge=1)
    compute_allowance_ms: float | None = Field(None, ge=0)
    input_jitter_ms: float = Field(120.0, ge=0)
    max_input_ahead_ms: float = Field(2000.0, gt=0)
    silence_dbfs: float = -45.0
    gate_attack_frames: float = Field(1.5, gt=0)
    gate_release_frames: float = Field(4.0, gt=0)
    normalisation_time_s: float = Field(20.0, gt=0)
    max_skip_run_frames: int = Field(25, ge=1)
    audio_lead_ms: float = Field(30.0, ge=0, le=80)
    ai_mark: bool = True


def output_delay_frames(chunk_frames: int, lookahead_frames: int, compute_allowance_ms: float) -> int:
    """D, the fixed delay of the output timeline behind the input, in whole frames.

    The first frame of a chunk can be rendered once the audio of the whole chunk and of the
    look-ahead is in (plus the feature window's margin) and the chunk is computed:
    (C + L)·40 ms + 7.5 ms + compute allowance, rounded up to whole frames so that audio and
    video stay frame-aligned.
    """
    delay_ms = (chunk_frames + lookahead_frames) * FRAME_MS + FEATURE_MARGIN_MS + compute_allowance_ms
    return math.ceil(delay_ms / FRAME_MS - 1e-9)
