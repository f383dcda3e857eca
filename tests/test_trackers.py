"""The tracker protocol and its implementations on real frames (skipped without ../shared/data)."""

from __future__ import annotations

import importlib.util
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from engines.errors import InputError, MissingDependencyError
from engines.geometry.layouts import IBUG68, MEDIAPIPE478
from engines.geometry.trackers import TRACKER_NAMES, LandmarkLayout, LandmarkTracker, create_tracker
from engines.media.decode import iter_video_frames


@pytest.fixture(scope="module")
def real_frames(shared_data_dir: Path) -> list[np.ndarray]:
    clip = sorted((shared_data_dir / "real" / "hdtf").glob("*.mp4"))[0]
    return list(islice(iter_video_frames(clip), 20))


@pytest.fixture(scope="module")
def pfld(shared_data_dir: Path) -> Path:
    return shared_data_dir / "landmarks" / "pfld.onnx"


BLANK = np.full((256, 256, 3), 128, np.uint8)


def test_mediapipe_tracker_follows_the_protocol_on_real_frames(real_frames: list[np.ndarray]) -> None:
    tracker = create_tracker("mediapipe")
    assert isinstance(tracker, LandmarkTracker)
    assert tracker.layout.num_points == 478 and tracker.layout.has_depth
    tracks = [tracker.track(frame) for frame in real_frames]
    assert all(points is not None and points.shape == (478, 3) for points in tracks)
    height, width = real_frames[0].shape[:2]
    first = tracks[0]
    assert first is not None
    assert first[:, 0].min() > 0 and first[:, 0].max() < width and 0 < first[:, 1].min() < height
    tracker.reset()
    assert tracker.track(BLANK) is None
    tracker.close()


def test_onnx68_tracker_agrees_with_the_mesh_on_the_mouth(real_frames: list[np.ndarray], pfld: Path) -> None:
    mesh = create_tracker("mediapipe")
    tracker = create_tracker("onnx68", pfld)
    assert isinstance(tracker, LandmarkTracker)
    assert tracker.layout == LandmarkLayout("ibug68", 68, has_depth=False)
    for frame in real_frames[::4]:
        points = tracker.track(frame)
        reference = mesh.track(frame)
        assert points is not None and reference is not None and points.shape == (68, 3)
        assert (points[:, 2] == 0).all()
        face_width = float(np.ptp(reference[:, 0]))
        mouth68 = points[list(IBUG68.lips), :2].mean(0)
        mouth_mesh = reference[list(MEDIAPIPE478.lips), :2].mean(0)
        assert np.linalg.norm(mouth68 - mouth_mesh) < 0.05 * face_width
        jaw_bottom = points[8, 1]
        assert jaw_bottom > mouth68[1]  # chin below the mouth: the layout is iBUG's
    tracker.reset()
    assert tracker.track(BLANK) is None
    tracker.close()
    mesh.close()


def test_onnx68_needs_a_readable_68_point_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--tracker-model"):
        create_tracker("onnx68")
    with pytest.raises(InputError, match="not found"):
        create_tracker("onnx68", tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a loadable ONNX model"):
        create_tracker("onnx68", junk)


def test_onnx68_rejects_a_model_with_the_wrong_output(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("Slice", ["flat", "s", "e"], ["out"]),
        ],
        "wrong",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])],
        [
            helper.make_tensor("s", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e", TensorProto.INT64, [1], [10]),
        ],
    )
    path = tmp_path / "ten.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InputError, match="136"):
        create_tracker("onnx68", path)


def test_unknown_tracker_names_the_choices() -> None:
    with pytest.raises(InputError) as error:
        create_tracker("dlib")
    for name in TRACKER_NAMES:
        assert name in str(error.value)


@pytest.mark.skipif(
    importlib.util.find_spec("face_alignment") is not None, reason="face-alignment is installed"
)
def test_face_alignment_missing_names_the_extra() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install -e \.\[eval\]"):
        create_tracker("face-alignment")


def test_mediapipe_prints_nothing_while_it_starts_and_tracks(capfd: pytest.CaptureFixture[str]) -> None:
    tracker = create_tracker("mediapipe")
    tracker.track(BLANK)
    tracker.track(BLANK)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    tracker.close()
