"""The mouth probe reads the bundled avatar's mouth opening from pixels alone, on speech it was not
calibrated on, through JPEG compression and at another frame size."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from engines.bundle import DEFAULT_AVATAR_DIR
from offline_training.synthetic.speech import synthesize_speech
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file
from realtime.mouth_probe import MouthProbe
from realtime.settings import StreamSettings


@pytest.fixture(scope="module")
def engine() -> Iterator[AvatarEngine]:
    loaded = AvatarEngine.load(DEFAULT_AVATAR_DIR, "onnxruntime-cpu", StreamSettings(chunk_frames=1))
    yield loaded
    loaded.close()


def _jpeg(image: npt.NDArray[np.uint8], quality: int) -> npt.NDArray[np.uint8]:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED), np.uint8)


def test_the_probe_follows_the_true_opening_on_unseen_speech(engine: AvatarEngine) -> None:
    probe = MouthProbe.calibrate(engine, synthesize_speech(seed=201, duration_s=8.0).audio)
    frames = [
        f
        for f in stream_file(engine, synthesize_speech(seed=202, duration_s=8.0).audio)
        if f.image is not None
    ]
    opening = np.array([f.inner_lip_area for f in frames])
    images = [f.image for f in frames if f.image is not None]
    clean = np.array([probe.score(image) for image in images])
    compressed = np.array([probe.score(_jpeg(image, 30)) for image in images])
    smaller = np.array(
        [
            probe.score(np.asarray(cv2.resize(image, (192, 192), interpolation=cv2.INTER_AREA), np.uint8))
            for image in images
        ]
    )
    # The sign-weighted pixel mean the probe replaced read 0.68 on such speech.
    assert np.corrcoef(clean, opening)[0, 1] > 0.9
    assert np.corrcoef(compressed, opening)[0, 1] > 0.9
    assert np.corrcoef(smaller, opening)[0, 1] > 0.85


def test_a_probe_needs_frames_with_an_opening_each() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 8 frames"):
        MouthProbe.fit([image] * 4, np.zeros(4))
    with pytest.raises(ValueError, match="at least 8 frames"):
        MouthProbe.fit([image] * 10, np.zeros(9))
