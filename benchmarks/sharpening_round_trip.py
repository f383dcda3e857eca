"""How much mouth sharpness the paste-back's upscaling costs, and how much the renderer's output
sharpening gives back, with no renderer in the way.

Each reference frame of an avatar is cut to the renderer's size and pasted back into itself exactly
as the stream pastes a rendered crop (same box, same blend weights), optionally through the
output sharpening of ``engines.nets.renderer`` (``sharpen_kernel``) first; the mouth-box CPBD of
the result is compared with the untouched frames'. This is how the `live` preset's amount was
chosen (docs/default-avatar.md), without the test recordings.

    python benchmarks/sharpening_round_trip.py [--avatar DIR] [--amounts 0 1.0 1.3 1.8] [--every 2]

Needs MediaPipe (the mouth box follows the tracked lips).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.bundle import DEFAULT_AVATAR_DIR, AvatarBundle
from engines.geometry.crop import paste_back
from engines.geometry.trackers import create_tracker
from engines.nets.renderer import SHARPEN_RADIUS, sharpen_kernel
from engines.render_io import paste_weights
from offline_training.evaluation.msi import track_normalised
from offline_training.evaluation.video_report import mouth_box_cpbd


def sharpened(crop: np.ndarray, amount: float) -> np.ndarray:
    """(S, S, 3) uint8 crop through the renderer's output sharpening (in its [-1, 1] range)."""
    if amount == 0:
        return crop
    signed = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    padded = F.pad(signed, (SHARPEN_RADIUS,) * 4, mode="replicate")
    out = F.conv2d(padded, sharpen_kernel(amount), groups=3).clamp(-1, 1)
    return np.asarray(((out[0].permute(1, 2, 0) + 1) * 127.5).clip(0, 255).numpy(), np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR_DIR)
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.0, 1.0, 1.3, 1.8])
    parser.add_argument("--every", type=int, default=2, help="use every n-th reference frame")
    args = parser.parse_args(argv)
    bundle = AvatarBundle.load(args.avatar)
    reference, box, size = bundle.reference, bundle.crop_box, bundle.config.renderer.image_size
    indices = list(range(0, len(reference), args.every))
    frames = np.stack([reference.full_frame(i) for i in indices])
    tracker = create_tracker("mediapipe")
    try:
        tracks = track_normalised(iter(frames), tracker)
    finally:
        tracker.close()
    original = mouth_box_cpbd(iter(frames), tracks)
    print(
        f"{args.avatar}: {len(indices)} reference frames, renderer {size} px, mouth-box CPBD {original:.4f}"
    )
    blend = [paste_weights(reference.mouth_mask(i)) for i in indices]
    for amount in args.amounts:
        trips = np.stack(
            [
                paste_back(frame, sharpened(box.crop(frame, size), amount), box, weights)
                for frame, weights in zip(frames, blend, strict=True)
            ]
        )
        value = mouth_box_cpbd(iter(trips), tracks)
        print(f"  sharpening {amount:.2f}: round trip {value:.4f} = {value / original:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
