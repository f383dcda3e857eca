"""Lip timing from what a call received: lip onsets in frames read by the mouth probe, the returned
sound by envelope cross-correlation, both matched with the onsets that were sent (one clock for
sender and receiver). See docs/benchmarks.md for the definitions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import percentiles
from benchmarks.signals import TestSignal, envelope_db
from engines.timebase import FPS, FRAME_MS, SAMPLE_RATE_HZ
from realtime.client import ClientRecording
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file
from realtime.mouth_probe import MouthProbe

MATCH_HALF_WIDTH_S = 0.1  # lips are matched within ±100 ms of the cross-correlation's lag
CLOSED_FRAMES = 3  # a mouth onset: a rise of OPENING_FRACTION over the 3 frames before
OPENING_FRACTION = 0.35
REFRACTORY_S = 0.4
MAX_PLAYOUT_BACKLOG_S = 0.06


def playout_times(recording: ClientRecording) -> tuple[np.ndarray, np.ndarray]:
    """Received audio as one (S,) array and (S,) play times: each packet plays when it arrives, or
    right after the previous one if that is still playing; a player keeps no more than 60 ms queued
    (beyond that it drops what is queued, as low-latency players do, instead of staying behind)."""
    rate = recording.audio_rate_hz
    samples, times, cursor = [], [], -np.inf
    for arrival, packet in recording.audio:
        start = max(arrival, cursor) if cursor - arrival <= MAX_PLAYOUT_BACKLOG_S else arrival
        samples.append(packet)
        times.append(start + np.arange(len(packet)) / rate)
        cursor = start + len(packet) / rate
    if not samples:
        return np.zeros(0, np.float32), np.zeros(0)
    return np.concatenate(samples), np.concatenate(times)


def received_loudness(recording: ClientRecording, hop_s: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The received sound's RMS on a ``hop_s`` grid of the playout clock: (times, RMS), each (T,)."""
    audio, times = playout_times(recording)
    if len(times) < 2:
        return np.zeros(0), np.zeros(0)
    grid = np.arange(times[0], times[-1], hop_s)
    slots = (np.searchsorted(grid, times, side="right") - 1).clip(0)
    power = np.bincount(slots, weights=audio.astype(np.float64) ** 2, minlength=len(grid))[: len(grid)]
    counts = np.bincount(slots, minlength=len(grid))[: len(grid)].clip(1)
    return grid, np.sqrt(power / counts)


def lips_after_sound_ms(
    arrivals: np.ndarray, scores: np.ndarray, grid: np.ndarray, loudness: np.ndarray, span_ms: int = 300
) -> tuple[float, float]:
    """The lag (ms, > 0: the lips come after the sound) that best correlates the mouth score of the
    frames arriving at ``arrivals`` with the received loudness, and that correlation (-1 if none):
    lip sync as the caller sees and hears it, with no onset detection and no threshold."""
    best = (0.0, -1.0)
    if len(grid) < 2 or len(scores) < 10:
        return best
    for lag_ms in range(-span_ms, span_ms + 1, 10):
        index = np.searchsorted(grid, arrivals - lag_ms / 1000).clip(0, len(grid) - 1)
        level = loudness[index]
        if level.std() == 0 or scores.std() == 0:
            continue
        corr = float(np.corrcoef(scores, level)[0, 1])
        if corr > best[1]:
            best = (float(lag_ms), corr)
    return best


def audio_delays_s(
    signal: TestSignal, started: float, recording: ClientRecording, onsets: np.ndarray
) -> list[float | None]:
    """When each onset's sound plays at the client, as a delay after it was spoken (None: not found).

    The loudness envelopes (5 ms) of the sent and the returned audio are cross-correlated: first
    over the whole call (0-1 s), then around each onset (-50..+300 ms of it, ±60 ms around the
    call's lag), so no loudness threshold decides where a sound starts in a lossy copy.
    """
    audio, play_times = playout_times(recording)
    hop_sent, hop_back = SAMPLE_RATE_HZ // 200, recording.audio_rate_hz // 200
    count = len(audio) // hop_back
    if count < 10:
        return [None] * len(onsets)
    back = np.sqrt((audio[: count * hop_back].reshape(count, hop_back) ** 2).mean(1))
    back_times = play_times[: count * hop_back : hop_back]
    frames = len(signal.audio) // hop_sent
    sent = np.sqrt((signal.audio[: frames * hop_sent].reshape(frames, hop_sent) ** 2).mean(1))
    sent_times = started + np.arange(frames) * hop_sent / SAMPLE_RATE_HZ

    def corr_at(lag: float, mask: np.ndarray) -> float:
        shifted = np.interp(sent_times[mask] + lag, back_times, back, left=0.0, right=0.0)
        if shifted.std() == 0 or sent[mask].std() == 0:
            return -1.0
        return float(np.corrcoef(sent[mask], shifted)[0, 1])

    everything = np.ones(frames, bool)
    overall = max(np.arange(0.0, 1.0, 0.005), key=lambda lag: corr_at(lag, everything))
    delays: list[float | None] = []
    for onset in onsets:
        window = (sent_times >= onset - 0.05) & (sent_times < onset + 0.3)
        lags = np.arange(overall - 0.06, overall + 0.06, 0.001)
        scores = [corr_at(lag, window) for lag in lags]
        delays.append(float(lags[int(np.argmax(scores))]) if max(scores) > 0.5 else None)
    return delays


def mouth_onsets(arrivals: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Arrival times of the frames where the lips start to part: the score rises above the median
    of the ``CLOSED_FRAMES`` frames before it by ``OPENING_FRACTION`` of the score's range (10th to
    90th percentile), at most one onset per ``REFRACTORY_S``."""
    if len(scores) < CLOSED_FRAMES + 1:
        return np.zeros(0)
    rise = OPENING_FRACTION * (np.percentile(scores, 90) - np.percentile(scores, 10))
    onsets: list[float] = []
    for i in range(CLOSED_FRAMES, len(scores)):
        baseline = np.median(scores[i - CLOSED_FRAMES : i])
        if scores[i] - baseline > rise and (not onsets or arrivals[i] - onsets[-1] > REFRACTORY_S):
            onsets.append(float(arrivals[i]))
    return np.asarray(onsets)


def first_within(times: np.ndarray, low: float, high: float) -> float | None:
    """The earliest of ``times`` in [low, high], or None."""
    inside = times[(times >= low) & (times <= high)]
    return float(inside[0]) if len(inside) else None


def best_lag_ms(
    signal: TestSignal, started: float, arrivals: np.ndarray, scores: np.ndarray
) -> tuple[float, float]:
    """Lag (ms) maximising the correlation of the mouth score with the sent loudness, and that
    correlation: a check on the onset matching that needs no threshold."""
    level = envelope_db(signal.audio, SAMPLE_RATE_HZ)
    level = np.maximum(level, level.max() - 60)
    hop_s = len(signal.audio) / SAMPLE_RATE_HZ / len(level)
    best = (0.0, -1.0)
    for lag_ms in range(0, 1000, 10):
        index = ((arrivals - started - lag_ms / 1000) / hop_s).astype(int)
        valid = (index >= 0) & (index < len(level))
        if valid.sum() < 20:
            continue
        corr = float(np.corrcoef(scores[valid], level[index[valid]])[0, 1])
        if corr > best[1]:
            best = (float(lag_ms), corr)
    return best


def analyse(
    signal: TestSignal, recording: ClientRecording, started: float, probe: MouthProbe
) -> dict[str, Any]:
    """Match each sent onset with the lips and the returned audio (all times on one clock)."""
    arrivals = np.array([frame.arrival_s for frame in recording.video])
    scores = np.array([probe.score(frame.image) for frame in recording.video])
    lips = mouth_onsets(arrivals, scores)
    # The threshold-free lag locates each onset's lips; a lip onset further than MATCH_HALF_WIDTH_S
    # from it is another movement (a weak onset missed, a later syllable), counted as unmatched.
    lag_ms, corr = best_lag_ms(signal, started, arrivals, scores)
    onsets = started + signal.onsets_s
    delays, offsets, unmatched = [], [], []
    for onset, audio_delay in zip(onsets, audio_delays_s(signal, started, recording, onsets), strict=True):
        expected = onset + lag_ms / 1000
        lips_out = first_within(lips, expected - MATCH_HALF_WIDTH_S, expected + MATCH_HALF_WIDTH_S)
        if lips_out is None:
            unmatched.append(_unmatched_lateness_ms(onset, expected))
            continue
        delays.append(1000 * (lips_out - onset))
        if audio_delay is not None:
            offsets.append(1000 * (lips_out - onset - audio_delay))
    stats = recording.stats[-1] if recording.stats else {}
    return {
        "signal": signal.name,
        "onsets_sent": len(signal.onsets_s),
        "onsets_matched": len(delays),
        "onsets_with_audio": len(offsets),
        "frames_received": len(arrivals),
        "frames_expected": int(signal.duration_s * FPS),
        "audio_in_to_lips_out_ms": delays,
        "unmatched_lateness_ms": unmatched,
        "av_offset_ms": offsets,
        "correlation_best_lag_ms": lag_ms,
        "correlation_at_best_lag": corr,
        "server": {key: stats.get(key) for key in ("pipeline_latency_ms", "frames_sent", "frames_skipped")},
        "rtt_ms_p50": float(np.median(recording.rtt_ms)) if recording.rtt_ms else None,
    }


def _unmatched_lateness_ms(onset: float, expected: float) -> float:
    """How late the lips count for a sent onset with no lip onset near ``expected``: at the end of
    its matching window, the latest time a lip onset would still have been matched. A later lip
    onset is not attributed to it (it is usually the next syllable's, and a mouth still open from
    the syllable before shows no onset at all), so this places every unmatched onset as late as
    the matching allows without inventing a delay the frames do not show."""
    return 1000 * (expected + MATCH_HALF_WIDTH_S - onset)


def render_response(
    engine: AvatarEngine, signals: list[TestSignal], probe: MouthProbe
) -> tuple[dict[str, float], float]:
    """The avatar's own timing, no clock and no transport: (frame where the mouth opens) × 40 ms
    minus the onset, on each signal's timeline (negative: the lips anticipate the sound); and the
    probe's fidelity, the correlation of its scores with the frames' true inner-lip areas over
    every signal (what the probe reads of the mouth, on speech it was not calibrated on)."""
    responses, scores_all, areas_all = [], [], []
    for signal in signals:
        frames = [f for f in stream_file(engine, signal.audio) if f.image is not None]
        scores = np.array([probe.score(f.image) for f in frames if f.image is not None])
        scores_all.append(scores)
        areas_all.append(np.array([f.inner_lip_area for f in frames]))
        lips = mouth_onsets(np.arange(len(scores)) * FRAME_MS / 1000, scores)
        for onset in signal.onsets_s:
            opened = first_within(lips, onset - 2 * FRAME_MS / 1000, onset + MATCH_HALF_WIDTH_S)
            if opened is not None:
                responses.append(1000 * (opened - onset))
    fidelity = (
        float(np.corrcoef(np.concatenate(scores_all), np.concatenate(areas_all))[0, 1]) if signals else 0.0
    )
    return (percentiles(responses) if responses else {}), fidelity
