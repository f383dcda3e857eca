"""torch's CPU ops on one thread for the small per-frame tensor work around the networks.

The per-frame tensors (face-shape raster, paste-back, smoothing sums) are small, and torch's
OpenMP team waits at every barrier for a thread whose core another busy thread (a backend's pool,
the event loop, a caller, another process) has taken: on a loaded 2-core machine a batch of
raster and paste-back took 200-650 ms with two threads instead of 5-16 ms with one (measured).
The thread count is process-wide, so the limit is counted across threads (``CountedHold``) and
the previous count returns when the last user is done; switching costs about 15 µs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engines.process_hold import CountedHold


def _one_thread() -> int:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


_ONE_THREAD = CountedHold(_one_thread, torch.set_num_threads)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the block's CPU tensor ops on one thread (nothing changes for other devices)."""
    if device.type != "cpu":
        yield
        return
    _ONE_THREAD.acquire()
    try:
        yield
    finally:
        _ONE_THREAD.release()
