"""Record the golden frames of ``tests/test_render_io.py`` again: their digests and block means.

Only when the frames are meant to change, or on a new machine after the tests warned that the
frames differ by rounding only. Run from the project root: ``python tests/record_golden_frames.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_render_io import AVATARS, BLOCK_MEANS, DIGESTS, block_means, digests, rendered

KINDS = ("offline", "offline_crops", "streaming")


def main() -> int:
    recorded: dict[str, dict[str, list[str]]] = {}
    means = {}
    for avatar in sorted(AVATARS):
        recorded[avatar] = {}
        for kind in KINDS:
            images = rendered(avatar, kind)
            recorded[avatar][kind] = digests(images)
            means[f"{avatar}/{kind}"] = block_means(images)
            print(f"{avatar} {kind}: {len(images)} frames", file=sys.stderr)
    DIGESTS.write_text(json.dumps(recorded, indent=1) + "\n")
    np.savez_compressed(BLOCK_MEANS, **means)  # type: ignore[arg-type]  # numpy types the keywords as allow_pickle
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
