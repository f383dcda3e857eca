"""The bundled default avatar: small, reproducible, mouths real speech it never heard, marked as AI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engines.av_sync import AvSync
from engines.bundle import DEFAULT_AVATAR_DIR, MANIFEST, AvatarBundle
from engines.timebase import FPS, SAMPLE_RATE_HZ
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file
from realtime.settings import StreamSettings

MAX_BUNDLE_BYTES = 25_000_000
SPEECH_FILES = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "speech").glob("*.wav"))
# Clean English (stereo), another language, and the noisiest mix; the other recordings (the 60 s one
# alone takes 20 s) run under -m slow.
DEFAULT_RUN_SPEECH = {"RD_Radio31_000", "japan1", "noisy_audio_cafeter_snr_0"}
# Issue 19's target missed by the `live` default avatar (docs/default-avatar.md). Under cafeteria
# babble at 0 dB SNR its mouth follows some of the babble (0.38 at -9 ms): strict, a fix shows. Real
# faces with this noise under their own sound score a median 0.20, none 0.5 (docs/evaluation.md).
KNOWN_MISSES = {"noisy_audio_cafeter_snr_0": "the mouth follows some of the cafeteria babble (issue 19)"}
# Three 6.4 s noisy recordings read 0.47-0.48 (as `stableface eval` reads them). Real faces with
# their own clean sound score a median 0.32 over that length, 0.24-0.31 with these recordings' noise
# under it, 1 of 10 reaching 0.5 (docs/evaluation.md). Not strict:
# another CPU's rounding can put them over 0.5.
NARROW_MISSES = {
    stem: "reads 0.47-0.48 on a 6.4 s recording, just under 0.5 (issue 19)"
    for stem in ("noisy_audio_meeting_snr_10", "noisy_audio_meeting_snr_20", "noisy_audio_office_snr_0")
}


def _speech_marks(stem: str) -> list[pytest.MarkDecorator]:
    marks = [] if stem in DEFAULT_RUN_SPEECH else [pytest.mark.slow]
    if stem in KNOWN_MISSES:
        marks.append(pytest.mark.xfail(reason=KNOWN_MISSES[stem], strict=True))
    if stem in NARROW_MISSES:
        marks.append(pytest.mark.xfail(reason=NARROW_MISSES[stem], strict=False))
    return marks


@pytest.fixture(scope="module")
def default_engine() -> Iterator[AvatarEngine]:
    engine = AvatarEngine.load(DEFAULT_AVATAR_DIR)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tracker() -> object:
    from engines.geometry.trackers import create_tracker

    return create_tracker("mediapipe")


def test_the_bundle_is_shipped_small_and_made_from_project_data() -> None:
    bundle = AvatarBundle.load(DEFAULT_AVATAR_DIR)  # checks every file's checksum
    files = [path for path in DEFAULT_AVATAR_DIR.rglob("*") if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    assert size <= MAX_BUNDLE_BYTES, f"default avatar is {size / 1e6:.1f} MB"
    assert bundle.manifest.name == "default"
    assert bundle.config.preset == "live"
    assert bundle.config.use_smoothing and bundle.config.audio.lookahead_frames == 1
    assert bundle.manifest.training["recipe_seed"] == 0
    provenance = (DEFAULT_AVATAR_DIR / "PROVENANCE.md").read_text()
    assert "astronaut" in provenance and "stableface build-default" in provenance
    # No path of the real test-clip folder anywhere in what ships.
    assert all(b"shared/data" not in path.read_bytes() for path in files if path.suffix in {".json", ".md"})


def _tracked_sync(engine: AvatarEngine, audio: np.ndarray, tracker: object) -> AvSync:
    from offline_training.evaluation.mouth_tracks import video_av_sync

    images = [frame.image for frame in stream_file(engine, audio) if frame.image is not None]
    return video_av_sync(images, audio, SAMPLE_RATE_HZ, FPS, tracker)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "speech",
    [pytest.param(path, id=path.stem, marks=_speech_marks(path.stem)) for path in SPEECH_FILES],
)
def test_mouths_real_speech_of_other_speakers_and_languages(
    speech: Path, default_engine: AvatarEngine, tracker: object, shared_data_dir: Path
) -> None:
    """The mouth read back from the rendered pixels by MediaPipe follows the speech (the sync measure
    of ``engines.av_sync``: a reliable reading, score ≥ 0.5, within ±40 ms)."""
    from engines.media.decode import load_audio

    sync = _tracked_sync(default_engine, load_audio(speech), tracker)
    assert sync.reliable, f"{speech.name}: {sync.reason}"
    assert sync.correlation >= 0.5, f"{speech.name}: score {sync.correlation:.2f} at {sync.offset_ms:+.0f} ms"
    assert abs(sync.offset_ms) <= 40, f"{speech.name}: best lag {sync.offset_ms:+.0f} ms"


def test_speech_files_are_there_when_the_data_is(shared_data_dir: Path) -> None:
    assert len(SPEECH_FILES) >= 10, "the parametrised speech tests found too few files"
    missing = DEFAULT_RUN_SPEECH - {path.stem for path in SPEECH_FILES}
    assert not missing, f"the default run's speech recordings are gone: {sorted(missing)}"


def test_two_seconds_of_silence_close_the_mouth(default_engine: AvatarEngine) -> None:
    from speech_signals import speech_with_pauses

    audio, _ = speech_with_pauses(5, [("speech", 2.0), ("silence", 2.0)])
    frames = list(stream_file(default_engine, audio))
    rest = default_engine.frames.inner_lip_area(default_engine.frames.rest_mouth)
    speaking = np.array([frame.inner_lip_area for frame in frames[:50]])
    closing = np.array([frame.inner_lip_area for frame in frames[-25:]])
    assert speaking.max() > rest + 0.5 * (speaking.max() - speaking.min()), "it never opened its mouth"
    np.testing.assert_allclose(closing, rest, atol=1e-6 * max(1.0, abs(rest)))
    silent = list(stream_file(default_engine, np.zeros(2 * SAMPLE_RATE_HZ, np.float32)))
    np.testing.assert_allclose(
        [frame.inner_lip_area for frame in silent], rest, atol=1e-6 * max(1.0, abs(rest))
    )


def test_output_carries_the_ai_mark_unless_switched_off(default_engine: AvatarEngine) -> None:
    audio = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    marked = next(f.image for f in stream_file(default_engine, audio) if f.image is not None)
    unmarked = stream_file(default_engine, audio, settings=StreamSettings(ai_mark=False))
    plain = next(f.image for f in unmarked if f.image is not None)
    changed = np.abs(marked.astype(np.int16) - plain.astype(np.int16)).max(axis=2) > 8
    rows, cols = np.nonzero(changed)
    height, width = plain.shape[:2]
    assert changed.sum() > 200, "no mark drawn"
    assert rows.min() > height * 0.8 and cols.min() > width * 0.4, (
        "the mark strays from the bottom-right corner"
    )


def test_the_bundled_provenance_states_the_recipe_build_default_runs() -> None:
    """A default changed in the recipe (or in what it leaves to ``prepare``/``train``, such as the
    head-pose steadying) must come with a rebuilt bundle: the bundle's stated recipe is today's."""
    from dataclasses import asdict

    from offline_training.default_avatar.recipe import DefaultAvatarRecipe

    provenance = (DEFAULT_AVATAR_DIR / "PROVENANCE.md").read_text()
    stated = json.loads(provenance.split("```json")[1].split("```")[0])
    assert stated == asdict(DefaultAvatarRecipe())


def test_build_default_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    from offline_training.default_avatar.corpus_a2e import CorpusSettings
    from offline_training.default_avatar.recipe import DefaultAvatarRecipe, build_default_avatar

    recipe = DefaultAvatarRecipe(
        seed=3,
        preset="live",  # a preset with smoothing: the renderer stage, then the joint stage
        clip_seconds=6.0,
        renderer_steps=3,
        batch_size=1,
        reference_frames=10,
        export_onnx=False,
        corpus=CorpusSettings(seed=3, utterances=2, seconds=3.0, steps=3, batch_size=2),
    )
    manifests = []
    for name in ("first", "second"):
        report = build_default_avatar(tmp_path / name, recipe, show_progress=False)
        manifests.append(json.loads((report.out / MANIFEST).read_text()))
        AvatarBundle.load(report.out)
    assert manifests[0]["files"] == manifests[1]["files"]
    assert manifests[0]["model"]["preset"] == "live" and manifests[0]["reference_frames"] == 10
    assert manifests[0]["training"]["steps_renderer"] == 3 and manifests[0]["training"]["steps_joint"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-default-")], "work folder left"
