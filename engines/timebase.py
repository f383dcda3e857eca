"""The media time base every part of the engine shares: 16 kHz mono audio, 25 fps video.

Datasets are decoded to these rates, the networks are trained at them and the real-time
pipeline runs at them; a module that needs a rate, a frame duration or the samples of one frame
imports it from here rather than declaring its own.
"""

from __future__ import annotations

SAMPLE_RATE_HZ = 16_000
FPS = 25
FRAME_MS = 1000 / FPS
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FPS
