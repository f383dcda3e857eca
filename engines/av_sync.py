"""A weights-free audio-visual sync measure: at what lag, and how well, a mouth follows the speech.

No network and no weights: for each candidate lag, a ridge regression from the sound's spectrum to
the mouth's shape is fitted on part of the recording and scored on the rest (cross-validated,
so a lag cannot win by overfitting), and the lag whose predictions hold best is the offset.

- **Mouth**: four distances between the face's landmarks, in 3D where the tracker gives depth
  (so that they change less as the head turns), over the distance between the eye centres (so
  they do not change with the head's distance or a crop): inner-lip height, outer-lip height,
  mouth width and jaw drop (under the nose to the chin). They disagree on purpose: the lips part
  for vowels, the width changes for rounded sounds, the jaw moves on its own time.
- **Sound**: 20 log-mel bands (55–7600 Hz) per video frame, floored 52 dB under the loudest band
  value. Spectral shape, not only loudness: an open jaw raises the first formant, rounded lips
  lower the second, a closed mouth stops the sound. No neighbouring frames as context: with them
  the regression absorbs a frame of misalignment and the peak flattens (±20 ms errors on mouths
  with a known lag, against ±2 ms without).
- **Score** at a lag: the mean over the four descriptors of the Pearson correlation between the
  cross-validated prediction and the measured descriptor (5 contiguous folds, ridge 30 on
  standardised features). The peak is refined to a fraction of a frame by a parabola.
- **Confidence**: the same search run against the sound circularly shifted by at least a second
  (up to 16 shifts: audio that does not belong to this mouth) gives the scores that chance
  reaches; the confidence is how many of their standard deviations the real peak stands above
  their mean. Below 3, or with the peak at the edge of the search, the result is "no reliable
  sync signal" and says why — the offset is then not a measurement.

A positive offset means the mouth moves *after* the sound. Validated on real recordings by
``benchmarks/sync_validation.py`` (docs/evaluation.md): it reads known shifts of a clip's own
audio and tells a speaker's own recording from another's; what it cannot say is whether a
recording's own "zero" is in sync — several real clips' mouths lead their tracks by 30–170 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.audio.features import LogMelConfig, log_mel
from engines.errors import InputError
from engines.geometry.layouts import anchors_for

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
MOUTH_DESCRIPTORS = ("inner_lip_height", "outer_lip_height", "mouth_width", "jaw_drop")
AUDIO_BANDS = 20
AUDIO_RANGE_NEPERS = 12.0  # ln-power range kept under the loudest band value (≈ 52 dB)
FOLDS = 5
RIDGE = 30.0
NULL_SHIFTS = 16
NULL_MIN_SHIFT_S = 1.0
MIN_CONFIDENCE = 3.0
NULL_SD_FLOOR = 0.02


@dataclass(frozen=True)
class AvSync:
    """Result of :func:`av_sync`.

    Attributes:
        offset_ms: lag of the mouth behind the sound at the best score (negative: ahead).
        correlation: cross-validated score at that lag (mean correlation of predicted and measured
            mouth descriptors; about 0 for audio that does not belong to the mouth).
        correlation_at_zero: the score without any shift.
        confidence: how many standard deviations the peak stands above the peaks that audio not
            belonging to this mouth reaches (NaN when the recording is too short to tell).
        reliable: the offset is a measurement (confidence ≥ 3 and the peak inside the search).
        reason: why it is not ("" when reliable).
    """

    offset_ms: float
    correlation: float
    correlation_at_zero: float
    confidence: float
    reliable: bool
    reason: str


def mouth_descriptors(points: npt.NDArray[np.floating[Any]], layout: str) -> FloatArray:
    """(T, 4) mouth descriptors (:data:`MOUTH_DESCRIPTORS`) of (T, N, 2 or 3) landmarks of ``layout``
    (x, y and, where given, the tracker's depth in the same unit), each distance over the distance
    between the eye centres; NaN rows stay NaN (no face).

    Raises:
        InputError: unknown layout, or points that do not match it.
    """
    anchors = anchors_for(layout)
    if points.ndim != 3 or points.shape[1] != anchors.num_points or points.shape[2] not in (2, 3):
        raise InputError(f"landmarks {points.shape} are not (T, {anchors.num_points}, 2 or 3) of {layout}")
    coords = points.astype(np.float64)

    def distance(a: int, b: int) -> Float64Array:
        result: Float64Array = np.linalg.norm(coords[:, a] - coords[:, b], axis=1)
        return result

    eyes = np.linalg.norm(
        coords[:, list(anchors.left_eye)].mean(axis=1) - coords[:, list(anchors.right_eye)].mean(axis=1),
        axis=1,
    )
    left, right = anchors.mouth_corners
    columns = (
        distance(anchors.inner_lip_top, anchors.inner_lip_bottom),
        distance(anchors.outer_lip_top, anchors.outer_lip_bottom),
        distance(left, right),
        distance(anchors.nose_bottom, anchors.chin),
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        descriptors = np.stack(columns, axis=1) / np.where(eyes > 1e-9, eyes, np.nan)[:, None]
    return descriptors.astype(np.float32)


def audio_descriptors(audio: FloatArray, sample_rate_hz: int, fps: float, frames: int) -> FloatArray:
    """(T, 20) sound descriptors of (S,) mono ``audio`` for ``frames`` video frames at ``fps``:
    20 log-mel bands per frame (the 10 ms analyses whose centres fall in it, power-averaged), in
    nepers, floored 12 under the loudest value.

    Frame ``t`` covers ``[t/fps, (t+1)/fps)`` s; audio past the end counts as silence.
    """
    if frames < 1:
        raise InputError(f"audio descriptors need at least one frame, not {frames}")
    cfg = LogMelConfig(sample_rate_hz=sample_rate_hz, n_mels=AUDIO_BANDS)
    mel = np.exp(log_mel(audio, cfg).astype(np.float64)) if len(audio) else np.zeros((0, AUDIO_BANDS))
    centres_s = (np.arange(len(mel)) + 0.5) * cfg.hop_samples / sample_rate_hz
    owner = np.floor(centres_s * fps).astype(np.int64)
    inside = owner < frames
    power = np.zeros((frames, AUDIO_BANDS))
    counts = np.zeros(frames)
    np.add.at(power, owner[inside], mel[inside])
    np.add.at(counts, owner[inside], 1.0)
    level = np.log(power / np.maximum(counts, 1.0)[:, None] + 1e-10)
    floored: FloatArray = np.maximum(level, level.max(initial=-23.0) - AUDIO_RANGE_NEPERS).astype(np.float32)
    return floored


def _standardised(values: Float64Array) -> Float64Array:
    spread = values.std(axis=0)
    result: Float64Array = (values - values.mean(axis=0)) / np.where(spread > 1e-9, spread, 1.0)
    return result


def _lag_scores(mouth: Float64Array, sound: Float64Array, max_lag: int) -> Float64Array:
    """(2·max_lag + 1,) cross-validated score at each lag ``k`` (mouth at ``t`` vs sound at ``t - k``)."""
    span = np.arange(max_lag, len(mouth) - max_lag)
    target = _standardised(mouth[span])
    folds = np.array_split(np.arange(len(span)), FOLDS)
    penalty = RIDGE * np.eye(sound.shape[1] + 1)
    penalty[-1, -1] = 0.0
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        inputs = _standardised(sound[span - lag])
        inputs = np.concatenate([inputs, np.ones((len(span), 1))], axis=1)
        gram, cross = inputs.T @ inputs, inputs.T @ target
        predicted = np.empty_like(target)
        for fold in folds:
            held = inputs[fold]
            weights = np.linalg.solve(gram - held.T @ held + penalty, cross - held.T @ target[fold])
            predicted[fold] = held @ weights
        scores.append(np.mean([_pearson(predicted[:, j], target[:, j]) for j in range(target.shape[1])]))
    return np.asarray(scores)


def _pearson(a: Float64Array, b: Float64Array) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _null_peaks(mouth: Float64Array, sound: Float64Array, max_lag: int, fps: float) -> Float64Array:
    """Peak scores against the sound circularly shifted by ≥ 1 s (and ≥ the search) each way."""
    smallest = max(int(round(NULL_MIN_SHIFT_S * fps)), 2 * max_lag + 1)
    if len(mouth) - 2 * smallest < 0:
        return np.zeros(0)
    shifts = np.unique(np.linspace(smallest, len(mouth) - smallest, NULL_SHIFTS).round().astype(int))
    return np.array([_lag_scores(mouth, np.roll(sound, int(s), axis=0), max_lag).max() for s in shifts])


def av_sync(mouth: FloatArray, sound: FloatArray, fps: float, max_lag_ms: float = 400.0) -> AvSync:
    """Offset, score and confidence of the sync between a mouth and a sound track.

    Args:
        mouth: (T, D) per-frame mouth descriptors (:func:`mouth_descriptors`; any D ≥ 1; a (T,)
            track counts as D = 1), no NaN.
        sound: (T, F) per-frame sound descriptors (:func:`audio_descriptors`).
        fps: frame rate of both.
        max_lag_ms: lags searched, each way.

    Raises:
        InputError: the tracks differ in length, hold NaN, or are too short for the lag range.
    """
    mouth_2d = mouth.reshape(len(mouth), -1).astype(np.float64)
    sound_2d = sound.reshape(len(sound), -1).astype(np.float64)
    if len(mouth_2d) != len(sound_2d) or mouth.ndim > 2 or sound.ndim > 2:
        raise InputError(f"mouth {mouth.shape} and sound {sound.shape} must be (T, ...) tracks alike")
    if not (np.isfinite(mouth_2d).all() and np.isfinite(sound_2d).all()):
        raise InputError("the mouth or sound track holds NaN or infinite values (fill missing faces first)")
    max_lag = int(round(max_lag_ms * fps / 1000))
    if len(mouth_2d) < 4 * max_lag + 2 or len(mouth_2d) < 2 * FOLDS:
        raise InputError(f"{len(mouth_2d)} frames are too few for a ±{max_lag_ms:.0f} ms lag search")
    scores = _lag_scores(mouth_2d, sound_2d, max_lag)
    best = int(np.argmax(scores))
    shift = 0.0
    if 0 < best < len(scores) - 1:
        left, centre, right = scores[best - 1], scores[best], scores[best + 1]
        curvature = left - 2 * centre + right
        if curvature < 0:
            shift = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    nulls = _null_peaks(mouth_2d, sound_2d, max_lag, fps)
    confidence = np.nan
    if len(nulls) >= 4:
        confidence = float((scores[best] - nulls.mean()) / max(float(nulls.std()), NULL_SD_FLOOR))
    reason = ""
    if best in (0, len(scores) - 1):
        reason = (
            f"no reliable sync signal: the best lag is at the edge of the ±{max_lag_ms:g} ms search "
            "(the real offset may be larger, or the mouth does not follow this speech)"
        )
    elif np.isnan(confidence):
        reason = "no reliable sync signal: the recording is too short to compare with unrelated audio"
    elif confidence < MIN_CONFIDENCE:
        reason = (
            f"no reliable sync signal: the mouth follows this speech hardly better than unrelated audio "
            f"(confidence {confidence:.1f} < {MIN_CONFIDENCE:g})"
        )
    return AvSync(
        offset_ms=float((best - max_lag + shift) * 1000 / fps),
        correlation=float(scores[best]),
        correlation_at_zero=float(scores[max_lag]),
        confidence=confidence,
        reliable=not reason,
        reason=reason,
    )
