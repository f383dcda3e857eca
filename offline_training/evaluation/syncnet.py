"""LSE-C and LSE-D lip-sync scores with the public SyncNet, its weights given by path.

Talking-face papers (Wav2Lip and later) report "LSE-D" (lip-sync error, distance: lower is better)
and "LSE-C" (lip-sync error, confidence: higher is better) computed with the SyncNet of Chung and
Zisserman, "Out of time: automated lip sync in the wild" (ACCV 2016 workshops), as released in
``joonson/syncnet_python`` with the checkpoint ``syncnet_v2.model``. This module re-implements that
network (:class:`SyncNet`, its parameter names match the checkpoint's) and the scoring of
``SyncNetInstance.evaluate`` (:func:`lse_scores`). It never downloads anything: the checkpoint is
given by path (:func:`load_syncnet`).

The reference feeds the network as follows, and :func:`lse_scores` does the same:

* video: 224x224 face crops at 25 fps, **BGR** channel order (frames read with ``cv2.imread``),
  values 0..255 as float, no mean subtraction or scaling; windows of 5 consecutive frames.
* audio: 16 kHz mono int16 samples -> ``python_speech_features.mfcc`` (13 coefficients, 100 frames
  a second); windows of 20 MFCC frames (0.2 s) starting at 4 x the video frame index.
* one lip and one audio embedding (1024-D) per window start; for each relative shift in
  ``-vshift..vshift`` the mean Euclidean distance between lip embedding ``i`` and audio embedding
  ``i + shift`` (zero vectors beyond the ends); LSE-D is the smallest mean distance, LSE-C the median
  of the mean distances minus that smallest one, and the AV offset is ``vshift - argmin``.
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from engines.errors import InputError
from engines.timebase import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from offline_training.evaluation.mfcc import mfcc

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
VideoRGB = npt.NDArray[np.uint8]

MFCC_PER_FRAME = 4  # 100 MFCC frames a second over 25 video frames a second
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
IMAGE_SIZE = 224
# The reference's loop `range(0, min_length - 5)` needs at least one window start.
MIN_FRAMES = WINDOW_FRAMES + 1
# Audio may be this many video frames shorter than the video (container rounding) before it is refused.
AUDIO_SHORTFALL_FRAMES = 1
INT16_SCALE = 32768.0
DEFAULT_VSHIFT = 15
DEFAULT_BATCH = 20
# Keys of BatchNorm counters that checkpoints from old PyTorch releases (syncnet_v2.model) lack.
_OPTIONAL_SUFFIX = "num_batches_tracked"
_KEY_PREFIXES = ("__S__.", "module.")


class SyncNet(nn.Module):
    """SyncNet's two-stream network (``SyncNetModel.S`` of ``joonson/syncnet_python``).

    The submodule names and ``nn.Sequential`` indices match the public checkpoint
    ``syncnet_v2.model``, so its state dict loads by name.
    """

    def __init__(self, embedding_size: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, embedding_size),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, embedding_size),
        )
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: Tensor) -> Tensor:
        """(N, E) audio embeddings of (N, 1, 13, 20) MFCC windows (coefficients x 10 ms frames)."""
        mid = self.netcnnaud(x)  # (N, 512, 1, 1)
        out: Tensor = self.netfcaud(mid.reshape(mid.shape[0], -1))
        return out

    def forward_lip(self, x: Tensor) -> Tensor:
        """(N, E) lip embeddings of (N, 3, 5, 224, 224) BGR windows of 5 frames, values 0..255."""
        mid = self.netcnnlip(x)  # (N, 512, 1, 1, 1)
        out: Tensor = self.netfclip(mid.reshape(mid.shape[0], -1))
        return out

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """((N, E), (N, E)) lip embeddings of (N, 3, 5, 224, 224) ``video`` and audio embeddings of
        (N, 1, 13, 20) ``audio``."""
        return self.forward_lip(video), self.forward_aud(audio)


@dataclass(frozen=True)
class SyncScores:
    """SyncNet's verdict on one clip.

    Attributes:
        lse_c: confidence, median minus minimum of the mean distances over offsets (higher: better).
        lse_d: minimum over offsets of the mean embedding distance (lower: better).
        offset_frames: ``vshift - argmin`` at 25 fps. Positive: the lips show a sound that many
            frames after the audio carries it (the video lags the audio); 0: in sync.
        frames: number of video frames used (the shorter of the video and the audio).
    """

    lse_c: float
    lse_d: float
    offset_frames: int
    frames: int


def _conversion_hint(path: Path) -> str:
    return (
        "convert it once, in a Python you trust with that file: "
        f"m = torch.load('{path}', weights_only=False); "
        f"torch.save(m.state_dict() if hasattr(m, 'state_dict') else dict(m), '{path.with_suffix('.pt')}')"
    )


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors stored in ``path`` (safetensors or a torch-saved state dict), on the CPU."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error type, or OSError
            raise InputError(f"SyncNet weights {path} are not a readable safetensors file: {exc}") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"SyncNet weights {path} are not a plain state dict (weights-only loading refused them: "
            f"{first}); {_conversion_hint(path)}"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"SyncNet weights {path} are not a readable torch file: {first}") from exc
    if isinstance(loaded, nn.Module):  # only possible with custom safe globals
        loaded = loaded.state_dict()
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise InputError(
            f"SyncNet weights {path} hold a {type(loaded).__name__}, not a state dict of named tensors; "
            f"{_conversion_hint(path)}"
        )
    return dict(loaded)


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without a prefix every key shares (``__S__.`` of SyncNetInstance, ``module.``)."""
    for prefix in _KEY_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _short_list(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_syncnet(path: Path, device: str = "cpu") -> SyncNet:
    """The SyncNet with the weights stored at ``path``, in eval mode on ``device``.

    ``path`` is a state dict saved by ``torch.save`` (``syncnet_v2.model`` of ``joonson/syncnet_python``,
    or any ``.pth``/``.pt``), loaded with ``weights_only=True``, or a ``.safetensors`` file. The
    BatchNorm counters ``num_batches_tracked``, which old checkpoints lack, may be missing; every other
    parameter and buffer must be present with its shape and nothing else may be.

    Raises:
        InputError: the file is missing or unreadable, is a pickled module rather than a state dict,
            or its names or shapes do not match SyncNet's.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"SyncNet weights {path} do not exist (give the path of syncnet_v2.model from "
            "joonson/syncnet_python, or of a state dict converted from it)"
        )
    state = _strip_prefix(_read_state_dict(path))
    model = SyncNet()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing {_short_list(missing)}")
        if unexpected:
            problems.append(f"unexpected {_short_list(unexpected)}")
        if wrong_shape:
            problems.append(f"wrong shape {_short_list(wrong_shape)}")
        raise InputError(f"SyncNet weights {path} do not match SyncNet: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    logger.info("loaded SyncNet weights from %s", path)
    return model.to(device).eval()


def offset_distances(video_emb: Tensor, audio_emb: Tensor, vshift: int = DEFAULT_VSHIFT) -> Tensor:
    """(N, 2 * vshift + 1) distances ``|video_emb[i] - audio_emb[i + j - vshift]|`` (``calc_pdist``).

    Args:
        video_emb: (N, E) lip embeddings, one per window start.
        audio_emb: (N, E) audio embeddings of the same window starts.
        vshift: largest shift, in video frames, tried either way.

    Audio embeddings beyond either end count as zero vectors, and the distance is
    ``torch.nn.functional.pairwise_distance`` (with its ``eps`` of 1e-6), as in the reference.
    """
    if video_emb.shape != audio_emb.shape or video_emb.ndim != 2:
        raise ValueError(f"embeddings must share one (N, E) shape, got {video_emb.shape}, {audio_emb.shape}")
    count = video_emb.shape[0]
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    columns = [
        torch.nn.functional.pairwise_distance(video_emb, padded[j : j + count]) for j in range(2 * vshift + 1)
    ]
    return torch.stack(columns, dim=1)


def _check_inputs(frames: VideoRGB, audio: FloatArray) -> int:
    """Number of video frames to use; raises InputError on unusable shapes or lengths."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"SyncNet needs (T, H, W, 3) uint8 RGB frames, got {frames.dtype} {frames.shape}")
    if audio.ndim != 1:
        raise InputError(f"SyncNet needs (S,) mono audio, got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise InputError("SyncNet audio has NaN or infinite samples")
    count = frames.shape[0]
    if count < MIN_FRAMES:
        raise InputError(
            f"SyncNet needs at least {MIN_FRAMES} frames ({MIN_FRAMES / FPS:.2f} s at 25 fps), "
            f"got {count}"
        )
    audio_frames = len(audio) // SAMPLES_PER_FRAME
    if audio_frames < count - AUDIO_SHORTFALL_FRAMES:
        raise InputError(
            f"SyncNet audio ({len(audio) / SAMPLE_RATE_HZ:.3f} s) is shorter than the video "
            f"({count / FPS:.3f} s at 25 fps); give 16 kHz audio covering every frame"
        )
    if len(audio) != count * SAMPLES_PER_FRAME:
        logger.warning(
            "audio (%.4f s) and video (%.4f s) lengths differ; using the first %d frames",
            len(audio) / SAMPLE_RATE_HZ,
            count / FPS,
            min(count, audio_frames),
        )
    used = int(min(count, audio_frames))
    if used < MIN_FRAMES:
        raise InputError(f"SyncNet needs at least {MIN_FRAMES} frames with audio, got {used}")
    return used


def syncnet_frames(frames: VideoRGB) -> Tensor:
    """(T, 3, 224, 224) uint8 BGR tensor of (T, H, W, 3) uint8 RGB frames, as the reference reads them.

    Frames of another size are resized with ``cv2.resize`` (bilinear), as ``run_pipeline.py`` does
    to its face crops.
    """
    resized = [
        frame if frame.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE) else cv2.resize(frame, (IMAGE_SIZE, IMAGE_SIZE))
        for frame in frames
    ]
    bgr = np.ascontiguousarray(np.stack(resized)[..., ::-1])
    return torch.from_numpy(bgr).permute(0, 3, 1, 2)


def syncnet_mfcc(audio: FloatArray) -> Tensor:
    """(13, M) float32 MFCCs of (S,) float audio in [-1, 1] at 16 kHz, as the reference computes them.

    The samples are scaled, rounded and clipped to int16 values first, as the reference reads them
    from an int16 wav file; M is 100 frames a second.
    """
    samples = np.clip(np.round(np.asarray(audio, np.float64) * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)
    return torch.from_numpy(mfcc(samples, SAMPLE_RATE_HZ).T.astype(np.float32))


def lse_scores(
    frames: VideoRGB,
    audio: FloatArray,
    model: SyncNet,
    vshift: int = DEFAULT_VSHIFT,
    batch_size: int = DEFAULT_BATCH,
) -> SyncScores:
    """LSE-C, LSE-D and AV offset of a face video with its audio, as ``SyncNetInstance.evaluate``.

    Args:
        frames: (T, H, W, 3) uint8 RGB face crops at 25 fps (resized to 224x224 if needed; crop as
            syncnet_python's ``run_pipeline.py`` does for numbers comparable with papers).
        audio: (S,) float audio in [-1, 1], mono, 16 kHz, starting with the first frame.
        model: the network (:func:`load_syncnet`); it is put in eval mode.
        vshift: largest offset tried either way, in frames (15 in syncnet_python's scripts).
        batch_size: windows per forward pass (does not change the result).

    Raises:
        InputError: fewer than 6 frames, audio shorter than the video, or malformed arrays.
    """
    frames = np.asarray(frames)
    audio = np.asarray(audio)
    used = _check_inputs(frames, audio)
    starts = used - WINDOW_FRAMES  # the reference's `lastframe`: window starts 0 .. used - 6
    video = syncnet_frames(frames[:used])
    cepstra = syncnet_mfcc(audio)
    if cepstra.shape[1] < (starts - 1) * MFCC_PER_FRAME + WINDOW_MFCC:  # cannot happen with the checks
        raise InputError(f"SyncNet audio gives only {cepstra.shape[1]} MFCC frames for {used} video frames")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    model.eval()
    lip_parts: list[Tensor] = []
    aud_parts: list[Tensor] = []
    with torch.inference_mode():
        for first in range(0, starts, batch_size):
            batch = range(first, min(starts, first + batch_size))
            clips = torch.stack([video[i : i + WINDOW_FRAMES] for i in batch])  # (n, 5, 3, 224, 224)
            lip_in = clips.permute(0, 2, 1, 3, 4).to(device=device, dtype=torch.float32)
            aud_in = torch.stack(
                [cepstra[:, i * MFCC_PER_FRAME : i * MFCC_PER_FRAME + WINDOW_MFCC] for i in batch]
            ).unsqueeze(1)  # (n, 1, 13, 20)
            lip_parts.append(model.forward_lip(lip_in).float().cpu())
            aud_parts.append(model.forward_aud(aud_in.to(device)).float().cpu())
        dists = offset_distances(torch.cat(lip_parts), torch.cat(aud_parts), vshift)
        mean_dist = dists.mean(dim=0)  # (2 * vshift + 1,)
        min_dist, min_index = torch.min(mean_dist, dim=0)
        confidence = torch.median(mean_dist) - min_dist
    scores = SyncScores(
        lse_c=float(confidence),
        lse_d=float(min_dist),
        offset_frames=vshift - int(min_index),
        frames=used,
    )
    if not (math.isfinite(scores.lse_c) and math.isfinite(scores.lse_d)):
        logger.warning("SyncNet scores are not finite: %s", scores)
    logger.info(
        "SyncNet: offset %d frames, LSE-D %.3f, LSE-C %.3f over %d frames",
        scores.offset_frames,
        scores.lse_d,
        scores.lse_c,
        used,
    )
    return scores
