"""``stableface prepare``: build an avatar dataset from a talking-head video.

Decode (25 fps, 16 kHz mono) → track every frame → fixed crop box → per-avatar face model →
face-shape images, mouth masks and crops → log-mel features → dataset folder. The folder is
built under a temporary name beside the destination and renamed only when complete, so an
interrupted or failed run never leaves a folder that looks like a dataset.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file
from tqdm import tqdm

import engines
from engines import render_io
from engines.audio.features import LogMelConfig, log_mel_for_video, normalise, utterance_stats
from engines.errors import InputError, OutputError
from engines.files import atomic_directory, sha256_file
from engines.geometry.crop import CropBox, crop_box_from_landmarks
from engines.geometry.face_model import FaceModelFit, fit_face_model
from engines.geometry.raster import face_shape_to_uint8
from engines.geometry.trackers import create_tracker
from engines.geometry.trackers.base import LandmarkTracker
from engines.media.decode import MediaInfo, iter_video_frames, load_audio, probe_media
from engines.media.encode import write_wav
from engines.timebase import FPS, SAMPLE_RATE_HZ
from offline_training.dataset.manifest import (
    SCHEMA_VERSION,
    AudioFeatureInfo,
    DatasetManifest,
    FaceModelInfo,
    SourceInfo,
    TrackerInfo,
    TrimInfo,
)
from offline_training.dataset.settings import PrepareSettings
from offline_training.dataset.steady_pose import steady_poses

logger = logging.getLogger(__name__)

PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]
JPEG_FULL = [cv2.IMWRITE_JPEG_QUALITY, 92]


@dataclass
class PrepareReport:
    """What a build did: the dataset and seconds spent per stage."""

    out: Path
    manifest: DatasetManifest
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_samples_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        total = sum(self.stage_seconds.values())
        return self.manifest.num_source_frames / total if total > 0 else 0.0


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.samples: dict[str, list[float]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            self.samples.setdefault(name, []).append(elapsed)


def prepare_dataset(settings: PrepareSettings) -> PrepareReport:
    """Build the dataset described by ``settings``.

    Raises:
        InputError: bad video or audio (see the module docstring of :mod:`engines.media.decode`),
            no face, a face in too few frames, audio and video of different lengths, too short.
        OutputError: the destination exists (without ``overwrite``) or cannot be written.
    """
    _check_destination(settings.out, settings.overwrite)
    watch = _Stopwatch()
    info = probe_media(settings.video)
    if not info.has_video:
        raise InputError(f"{settings.video}: has no video stream")
    audio_path = settings.audio or settings.video
    if settings.audio is None and not info.has_audio:
        raise InputError(f"{settings.video}: has no audio track; give the speech with --audio WAV")
    with watch.stage("decode_audio"):
        audio = load_audio(audio_path, SAMPLE_RATE_HZ)

    tracker = create_tracker(settings.tracker, settings.tracker_model)
    try:
        landmarks, found, frame_size = _track_video(settings, info, tracker, watch)
    finally:
        tracker.close()

    num_frames, trim = _reconcile_lengths(settings, len(found), len(audio))
    found = found[:num_frames]
    landmarks = landmarks[:num_frames]
    kept = np.flatnonzero(found)
    _check_faces(settings.video, found, settings.min_face_fraction)
    layout = tracker.layout

    with watch.stage("face_model"):
        fit = fit_face_model(
            landmarks[kept],
            layout.name,
            settings.mouth_dims,
            settings.upper_dims,
            planar=not layout.has_depth,
        )
        fit = replace(fit, pose=steady_poses(fit.pose, kept, settings.pose_steadying))
        box = crop_box_from_landmarks(landmarks[kept], frame_size[0], frame_size[1], settings.crop_margin)

    with watch.stage("audio_features"):
        feature_cfg = LogMelConfig(sample_rate_hz=SAMPLE_RATE_HZ)
        audio = audio[: int(round(num_frames / FPS * SAMPLE_RATE_HZ))]
        raw_features = log_mel_for_video(audio, num_frames, FPS, feature_cfg)
        stats = utterance_stats(raw_features)
        features = normalise(raw_features, stats)

    manifest = DatasetManifest(
        schema_version=SCHEMA_VERSION,
        created_with=f"stableface {engines.__version__}",
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        fps=FPS,
        sample_rate_hz=SAMPLE_RATE_HZ,
        render_size=settings.render_size,
        crop_box=box.to_dict(),
        num_source_frames=num_frames,
        num_frames=len(kept),
        dropped_frames=[int(i) for i in np.flatnonzero(~found)],
        source=SourceInfo(
            video_name=settings.video.name,
            video_sha256=sha256_file(settings.video),
            video_fps=info.fps,
            video_width=frame_size[0],
            video_height=frame_size[1],
            audio_name=audio_path.name,
            audio_sha256=sha256_file(audio_path),
        ),
        trim=trim,
        tracker=TrackerInfo(name=settings.tracker, layout=layout.name, num_points=layout.num_points),
        face_model=FaceModelInfo(
            mouth_dims=fit.model.mouth_dims,
            upper_dims=fit.model.upper_dims,
            explained_variance=fit.model.explained_variance,
            planar=fit.model.planar,
        ),
        pose_steadying_frames=settings.pose_steadying,
        audio_features=AudioFeatureInfo(
            kind="log-mel",
            n_mels=feature_cfg.n_mels,
            win_ms=feature_cfg.win_ms,
            hop_ms=feature_cfg.hop_ms,
            frames_per_video_frame=feature_cfg.frames_per_video_frame(FPS),
            normalisation="per-utterance mean/std per band",
            mean=[float(x) for x in stats.mean],
            std=[float(x) for x in stats.std],
        ),
    )
    with atomic_directory(settings.out, replace=settings.overwrite) as staging:
        for sub in ("frames", "shapes", "masks", "full"):
            (staging / sub).mkdir()
        _write_images(settings, staging, kept, fit, landmarks[kept], box, watch)
        with watch.stage("write_arrays"):
            fit.model.save(staging / "face_model.safetensors")
            save_file(
                {
                    "source_frame_index": kept.astype(np.int64),
                    "landmarks": np.ascontiguousarray(landmarks[kept]),
                    "mouth_params": fit.mouth_params,
                    "upper_params": fit.upper_params,
                    "pose_scale": fit.pose.scale,
                    "pose_rotation": fit.pose.rotation,
                    "pose_translation": fit.pose.translation,
                    "audio_features": features.astype(np.float32),
                },
                str(staging / "arrays.safetensors"),
            )
            write_wav(staging / "audio.wav", audio, SAMPLE_RATE_HZ)
            (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
    logger.info("dataset written to %s (%d frames)", settings.out, len(kept))
    return PrepareReport(
        out=settings.out, manifest=manifest, stage_seconds=watch.seconds, stage_samples_s=watch.samples
    )


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{parent}: is not a folder")


def _track_video(
    settings: PrepareSettings, info: MediaInfo, tracker: LandmarkTracker, watch: _Stopwatch
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], tuple[int, int]]:
    layout = tracker.layout
    points: list[npt.NDArray[np.float32]] = []
    found: list[bool] = []
    frame_size = (info.width, info.height)
    expected = int(round(info.video_duration_s * FPS)) or None
    frames = iter_video_frames(settings.video, FPS)
    bar = tqdm(total=expected, desc="track", unit="frame", disable=not settings.show_progress, leave=False)
    empty = np.zeros((layout.num_points, 3), dtype=np.float32)
    with bar:
        while True:
            with watch.stage("decode_video"):
                frame = next(frames, None)
            if frame is None:
                break
            frame_size = (frame.shape[1], frame.shape[0])
            with watch.stage("track"):
                result = tracker.track(frame)
            found.append(result is not None)
            points.append(empty if result is None else result.astype(np.float32))
            bar.update(1)
    if not points:
        raise InputError(f"{settings.video}: the video has no frames")
    return np.stack(points), np.array(found, dtype=bool), frame_size


def _reconcile_lengths(
    settings: PrepareSettings, video_frames: int, audio_samples: int
) -> tuple[int, TrimInfo]:
    video_s = video_frames / FPS
    audio_s = audio_samples / SAMPLE_RATE_HZ
    if abs(video_s - audio_s) > settings.max_av_mismatch_s:
        raise InputError(
            f"audio ({audio_s:.2f} s) and video ({video_s:.2f} s) differ by {abs(video_s - audio_s):.2f} s, "
            f"more than {settings.max_av_mismatch_s:.2f} s: they do not belong together"
        )
    used_s = min(video_s, audio_s)
    if used_s < settings.min_duration_s:
        raise InputError(
            f"{settings.video}: too short ({used_s:.2f} s); need at least {settings.min_duration_s:g} s"
        )
    num_frames = min(video_frames, int(np.floor(audio_s * FPS + 1e-6)))
    trim = TrimInfo(
        video_duration_s=round(video_s, 4),
        audio_duration_s=round(audio_s, 4),
        used_duration_s=num_frames / FPS,
    )
    return num_frames, trim


def _frame_ranges(indices: npt.NDArray[np.int64], limit: int = 6) -> str:
    ranges: list[str] = []
    start = prev = int(indices[0])
    for value in [*map(int, indices[1:]), -2]:
        if value != prev + 1:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
            start = value
        prev = value
    shown = ", ".join(ranges[:limit])
    return shown + (f", … ({len(ranges) - limit} more ranges)" if len(ranges) > limit else "")


def _check_faces(video: Path, found: npt.NDArray[np.bool_], min_fraction: float) -> None:
    if not found.any():
        raise InputError(f"{video}: no face found in any frame")
    fraction = float(found.mean())
    if fraction < min_fraction:
        missing = np.flatnonzero(~found)
        raise InputError(
            f"{video}: a face in only {fraction:.0%} of frames (need {min_fraction:.0%}); "
            f"no face in {len(missing)} of {len(found)} frames at 25 fps: {_frame_ranges(missing)}"
        )


def _write_images(
    settings: PrepareSettings,
    staging: Path,
    kept: npt.NDArray[np.int64],
    fit: FaceModelFit,
    landmarks: npt.NDArray[np.float32],
    box: CropBox,
    watch: _Stopwatch,
) -> None:
    """Second pass over the video: crops, face shapes and mouth masks of the kept frames."""
    size = settings.render_size
    model = fit.model
    wanted = {int(source): position for position, source in enumerate(kept)}
    pending: list[Future[bool]] = []
    bar = tqdm(total=len(kept), desc="render", unit="frame", disable=not settings.show_progress, leave=False)
    with ThreadPoolExecutor(max_workers=2) as writer, bar:
        frames = iter_video_frames(settings.video, FPS)
        for source_index in range(int(kept[-1]) + 1):
            with watch.stage("decode_video"):
                frame = next(frames, None)
            if frame is None:
                raise InputError(f"{settings.video}: the video ended early on the second read")
            position = wanted.get(source_index)
            if position is None:
                continue
            name = f"{position:06d}.png"
            with watch.stage("crop"):
                crop = box.crop(frame, size)
            with watch.stage("face_shape"):
                one = slice(position, position + 1)
                pose = fit.pose.select(np.arange(position, position + 1))
                shape = render_io.face_shapes(
                    model, box, size, pose, fit.mouth_params[one], fit.upper_params[one]
                )[0]
                shape_image = face_shape_to_uint8(shape.transpose(1, 2, 0))
            with watch.stage("mouth_mask"):
                mask = render_io.crop_mouth_mask(landmarks[position], box, model, size)
            with watch.stage("write_images"):
                pending.append(
                    writer.submit(cv2.imwrite, str(staging / "frames" / name), crop[..., ::-1], PNG_FAST)
                )
                pending.append(
                    writer.submit(
                        cv2.imwrite,
                        str(staging / "full" / f"{position:06d}.jpg"),
                        frame[..., ::-1],
                        JPEG_FULL,
                    )
                )
                pending.append(
                    writer.submit(
                        cv2.imwrite, str(staging / "shapes" / name), shape_image[..., [2, 1, 0, 3]], PNG_FAST
                    )
                )
                pending.append(writer.submit(cv2.imwrite, str(staging / "masks" / name), mask, PNG_FAST))
                if len(pending) > 64:
                    _raise_on_failed_writes(pending[:32])
                    del pending[:32]
            bar.update(1)
        with watch.stage("write_images"):
            _raise_on_failed_writes(pending)


def _raise_on_failed_writes(futures: list[Future[bool]]) -> None:
    for future in futures:
        if not future.result():
            raise OSError("an image could not be written")


def manifest_summary(manifest: DatasetManifest) -> str:
    """A few human-readable lines about a built dataset."""
    return json.dumps(
        {
            "frames": manifest.num_frames,
            "dropped": len(manifest.dropped_frames),
            "seconds": manifest.trim.used_duration_s,
            "crop_box": manifest.crop_box,
            "explained_variance": round(manifest.face_model.explained_variance, 4),
        }
    )
