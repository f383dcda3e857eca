"""The lip-sync measure on real talking heads (skipped where ../shared/data is absent).

The whole validation (every real clip, the issue's targets: ≥ 80% of known shifts found within
±40 ms, ≥ 90% of own-versus-other pairs won) runs under ``-m slow``; the default run checks three
short clips with a clear signal, where every shift must be read and every pair won.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import sync_validation
from engines.errors import InputError
from engines.media.encode import write_wav

CLEAR_CLIPS = ("WDA_EdMarkey0_000", "WDA_BobMenendez_000", "RD_Radio2_000")


def _validate(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    clips = [(path.stem, *sync_validation.mouth_and_audio(path)) for path in paths]
    measured = [sync_validation.measure(name, mouth, audio) for name, mouth, audio in clips]
    shifts = [row for clip in measured for row in clip["shifts"] if row["shift_ms"] != 0]
    return shifts, sync_validation.own_versus_others(clips)


def test_known_shifts_are_read_and_own_audio_wins_on_clear_clips(shared_data_dir: Path) -> None:
    paths = [shared_data_dir / "real" / "hdtf" / f"{name}.mp4" for name in CLEAR_CLIPS]
    shifts, pairs = _validate(paths)
    missed = [(row["shift_ms"], round(row["relative_error_ms"])) for row in shifts if not row["relative_hit"]]
    assert not missed, f"shifts not read within ±40 ms: {missed}"
    assert all(pair["own_wins"] for pair in pairs), pairs


@pytest.mark.slow
def test_the_measure_meets_its_targets_on_every_real_clip(shared_data_dir: Path) -> None:
    paths = sorted((shared_data_dir / "real").glob("*/*.mp4"))
    shifts, pairs = _validate(paths)
    found = sum(row["relative_hit"] for row in shifts)
    won = sum(pair["own_wins"] for pair in pairs)
    assert found >= 0.8 * len(shifts), f"{found} of {len(shifts)} shifts found"
    assert won >= 0.9 * len(pairs), f"{won} of {len(pairs)} pairs won"


def test_noise_is_laid_under_the_sound_at_the_named_snr() -> None:
    rng = np.random.default_rng(3)
    speech = rng.standard_normal(16000).astype(np.float32) * 0.2
    noise = rng.standard_normal(5000)  # shorter than the speech: looped
    for snr_db in (0.0, 10.0, 20.0):
        added = sync_validation.with_noise(speech, noise, snr_db).astype(np.float64) - speech
        measured = 10 * np.log10(np.mean(np.square(speech, dtype=np.float64)) / np.mean(np.square(added)))
        assert measured == pytest.approx(snr_db, abs=0.01)


def _recordings(folder: Path, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The speech folder's layout with white noise for speech and noises: one utterance, near clean
    (meeting noise 20 dB under it) and under each noise at 0 dB. Returns the speech and the noises."""
    rng = np.random.default_rng(seed)
    speech, *noise = ((0.1 * rng.standard_normal(32000)).astype(np.float32) for _ in range(4))
    noises = dict(zip(("cafeter", "meeting", "office"), noise, strict=True))
    folder.mkdir()
    near_clean = (speech + 0.1 * noises["meeting"]).astype(np.float32)
    write_wav(folder / "noisy_audio_meeting_snr_20.wav", near_clean)
    for name, one in noises.items():
        write_wav(folder / f"noisy_audio_{name}_snr_0.wav", (speech + one).astype(np.float32))
    return speech, noises


def test_the_noise_under_each_recording_is_recovered(tmp_path: Path) -> None:
    speech, noises = _recordings(tmp_path / "speech", seed=4)
    estimated = sync_validation.speech_noises(tmp_path / "speech")
    assert sorted(estimated) == sorted(noises)
    for name, noise in noises.items():
        assert np.corrcoef(estimated[name], noise)[0, 1] > 0.99  # the meeting trace is 20 dB under
        assert abs(np.corrcoef(estimated[name], speech)[0, 1]) < 0.05  # the speech cancelled


def test_recordings_of_another_utterance_are_refused(tmp_path: Path) -> None:
    _recordings(tmp_path / "speech", seed=5)
    other = (0.1 * np.random.default_rng(6).standard_normal(32000)).astype(np.float32)
    write_wav(tmp_path / "speech" / "noisy_audio_office_snr_0.wav", other)
    with pytest.raises(InputError, match="office"):
        sync_validation.speech_noises(tmp_path / "speech")
    (tmp_path / "speech" / "noisy_audio_cafeter_snr_0.wav").unlink()
    with pytest.raises(InputError):
        sync_validation.speech_noises(tmp_path / "speech")
