"""Test signals with sharp, known onsets for the latency benchmark, and the onset detectors.

Both signals alternate sound and digital silence, so every onset is unambiguous in the sent audio,
in the audio that comes back and in the avatar's mouth (the voice gate closes it in silence):

- ``bursts``: the project's generated speech (``offline_training.synthetic``), 0.35-0.6 s bursts
  separated by 0.6-1.0 s of silence, onsets at random sub-frame positions;
- ``speech``: a real recording cut into 0.5 s pieces (each starting at a random point of the
  file), each followed by 0.6-0.9 s of silence; pieces without speech in them are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.timebase import SAMPLE_RATE_HZ
from offline_training.synthetic.speech import synthesize_speech
from realtime.live import load_speech

FloatArray = npt.NDArray[np.float32]
LEAD_IN_S = 1.0  # silence before the first onset: the call settles, the mouth is closed
ENVELOPE_MS = 5.0
ONSET_BELOW_PEAK_DB = 30.0  # an onset: the 5 ms envelope rises within 30 dB of the signal's peak
MIN_SILENCE_S = 0.3  # ... after at least this long below it


@dataclass
class TestSignal:
    """Audio with its onsets.

    Attributes:
        name: what it is (``bursts`` or the speech file's name).
        audio: (S,) float32 16 kHz mono.
        onsets_s: (N,) seconds from the first sample, as ``audio_onsets`` finds them.
    """

    name: str
    audio: FloatArray
    onsets_s: FloatArray

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE_HZ


def bursts(seed: int, seconds: float) -> TestSignal:
    """Generated speech bursts with silence between them, ``seconds`` long."""
    rng = np.random.default_rng(seed)
    speech = synthesize_speech(seed, seconds, SAMPLE_RATE_HZ).audio
    pieces = [np.zeros(int(LEAD_IN_S * SAMPLE_RATE_HZ), np.float32)]
    used = len(pieces[0])
    cursor = 0
    loud = envelope_db(speech, SAMPLE_RATE_HZ) > _peak_db(speech) - 20
    while used < seconds * SAMPLE_RATE_HZ:
        length = int(rng.uniform(0.35, 0.6) * SAMPLE_RATE_HZ)
        start = _loud_start(loud, cursor, length, len(speech))
        pieces.append(_faded(speech[start : start + length]))
        pieces.append(np.zeros(int(rng.uniform(0.6, 1.0) * SAMPLE_RATE_HZ), np.float32))
        cursor = (start + length) % max(1, len(speech) - length)
        used += len(pieces[-2]) + len(pieces[-1])
    audio = _normalised(np.concatenate(pieces)[: int(seconds * SAMPLE_RATE_HZ)])
    return TestSignal("bursts", audio, audio_onsets(audio, SAMPLE_RATE_HZ))


def speech_pieces(path: Path, seed: int, seconds: float, piece_s: float = 0.5) -> TestSignal:
    """Pieces of a real recording with 0.6-0.9 s of silence between them, ``seconds`` long."""
    speech = load_speech(path)
    rng = np.random.default_rng(seed)
    length = int(piece_s * SAMPLE_RATE_HZ)
    loud = envelope_db(speech, SAMPLE_RATE_HZ) > _peak_db(speech) - 20
    pieces = [np.zeros(int(LEAD_IN_S * SAMPLE_RATE_HZ), np.float32)]
    used = len(pieces[0])
    for _ in range(1000):
        if used >= seconds * SAMPLE_RATE_HZ:
            break
        start = int(rng.integers(0, max(1, len(speech) - length)))
        window = slice(start // _hop(SAMPLE_RATE_HZ), (start + length) // _hop(SAMPLE_RATE_HZ))
        if loud[window].mean() < 0.3:
            continue  # mostly pause or noise: no clear mouth movement to time
        gap = np.zeros(int(rng.uniform(0.6, 0.9) * SAMPLE_RATE_HZ), np.float32)  # onsets off the frame grid
        pieces += [_faded(speech[start : start + length]), gap]
        used += length + len(gap)
    audio = _normalised(np.concatenate(pieces)[: int(seconds * SAMPLE_RATE_HZ)])
    return TestSignal(path.stem, audio, audio_onsets(audio, SAMPLE_RATE_HZ))


def audio_onsets(audio: FloatArray, rate_hz: int) -> FloatArray:
    """(N,) times in seconds where the 5 ms RMS envelope of (S,) ``audio`` rises within 30 dB of
    its peak after at least 0.3 s below that level."""
    level = envelope_db(audio, rate_hz)
    above = level > _peak_db(audio) - ONSET_BELOW_PEAK_DB
    hop_s = ENVELOPE_MS / 1000
    quiet_needed = int(MIN_SILENCE_S / hop_s)
    onsets, quiet = [], quiet_needed  # the start of the signal counts as silence
    for index, loud in enumerate(above):
        if loud and quiet >= quiet_needed:
            onsets.append(index * hop_s)
        quiet = 0 if loud else quiet + 1
    return np.asarray(onsets, np.float32)


def _hop(rate_hz: int) -> int:
    return int(rate_hz * ENVELOPE_MS / 1000)


def envelope_db(audio: FloatArray, rate_hz: int) -> FloatArray:
    """(S // hop,) 5 ms RMS envelope of (S,) ``audio`` in dBFS."""
    hop = _hop(rate_hz)
    count = len(audio) // hop
    power = (audio[: count * hop].astype(np.float64).reshape(count, hop) ** 2).mean(1)
    return np.asarray(10 * np.log10(power + 1e-12), dtype=np.float32)


def _peak_db(audio: FloatArray) -> float:
    return float(np.percentile(envelope_db(audio, SAMPLE_RATE_HZ), 99))


def _loud_start(loud: npt.NDArray[np.bool_], cursor: int, length: int, total: int) -> int:
    """The first sample at or after ``cursor`` whose 5 ms envelope is ``loud`` (a syllable starts)
    and that leaves ``length`` samples before the end (``total``)."""
    hop = _hop(SAMPLE_RATE_HZ)
    for index in range(cursor // hop, len(loud)):
        if loud[index] and index * hop + length <= total:
            return index * hop
    return 0


def _faded(piece: FloatArray, fade_ms: float = 5.0) -> FloatArray:
    """A 5 ms fade at both ends (no click in the silence, where the mouth must stay closed)."""
    fade = min(len(piece) // 2, int(SAMPLE_RATE_HZ * fade_ms / 1000))
    out = piece.astype(np.float32).copy()
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    out[:fade] *= ramp
    out[len(out) - fade :] *= ramp[::-1]
    return out


def _normalised(audio: FloatArray, peak: float = 0.7) -> FloatArray:
    return (audio * (peak / max(1e-6, float(np.abs(audio).max())))).astype(np.float32)
