"""A ring of video frames in shared memory: a render worker writes a call's images, the server
process that sends them reads them, and no image is pickled through a pipe.

The ring has ``slots`` slots, each an 8-byte header (the output frame index it holds) and one
(H, W, 3) uint8 image. Frame ``k`` goes to slot ``k % slots``. The writer writes the image first,
then the header; it tells the reader about the frame (over the worker's pipe) after both. The
reader copies the image and checks the header before and after: a slot the writer has already
reused for a newer frame (the reader fell ``slots`` frames behind) is reported as lost rather
than torn. The process that creates a ring owns its name and unlinks it; the other only attaches.
"""

from __future__ import annotations

import contextlib
from multiprocessing import shared_memory

import numpy as np
import numpy.typing as npt

HEADER_BYTES = 8
EMPTY = -1
ImageRGB = npt.NDArray[np.uint8]


class FrameRing:
    """One call's frames in shared memory.

    Args:
        memory: the shared block (``slots`` × (header + image)).
        shape: (H, W, 3) of every image.
        slots: frames the ring holds.
        owner: this side created the block (and unlinks it on ``close``).
    """

    def __init__(
        self, memory: shared_memory.SharedMemory, shape: tuple[int, int, int], slots: int, owner: bool
    ) -> None:
        self.memory, self.shape, self.slots, self.owner = memory, shape, slots, owner
        self.image_bytes = int(np.prod(shape))
        self.slot_bytes = HEADER_BYTES + self.image_bytes
        self._closed = False

    @classmethod
    def create(cls, shape: tuple[int, int, int], slots: int) -> FrameRing:
        """A new ring, every slot empty (the reader's side)."""
        size = slots * (HEADER_BYTES + int(np.prod(shape)))
        ring = cls(shared_memory.SharedMemory(create=True, size=size), shape, slots, owner=True)
        for slot in range(slots):
            ring._header(slot)[0] = EMPTY
        return ring

    @classmethod
    def attach(cls, name: str, shape: tuple[int, int, int], slots: int) -> FrameRing:
        """The ring another process created (the writer's side).

        Raises:
            FileNotFoundError: no such ring (its owner has closed it).
        """
        # Python 3.11 registers an attached block with the resource tracker too; a render worker
        # shares the server's tracker (spawned by it), where the registration is the owner's.
        return cls(shared_memory.SharedMemory(name=name), shape, slots, owner=False)

    @property
    def name(self) -> str:
        return self.memory.name

    def _header(self, slot: int) -> npt.NDArray[np.int64]:
        return np.ndarray((1,), np.int64, self.memory.buf, slot * self.slot_bytes)

    def _image(self, slot: int) -> ImageRGB:
        return np.ndarray(self.shape, np.uint8, self.memory.buf, slot * self.slot_bytes + HEADER_BYTES)

    def write(self, index: int, image: ImageRGB) -> int:
        """Put output frame ``index``'s image (H, W, 3) uint8 in its slot; returns the slot."""
        slot = index % self.slots
        self._header(slot)[0] = EMPTY
        self._image(slot)[...] = image
        self._header(slot)[0] = index
        return slot

    def read(self, index: int) -> ImageRGB | None:
        """A copy of output frame ``index``'s image, or None when its slot holds another frame."""
        slot = index % self.slots
        if self._header(slot)[0] != index:
            return None
        image = self._image(slot).copy()
        return image if self._header(slot)[0] == index else None

    def close(self) -> None:
        """Detach (and unlink, on the owner's side); idempotent."""
        if self._closed:
            return
        self._closed = True
        self.memory.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):  # unlinked already
                self.memory.unlink()
