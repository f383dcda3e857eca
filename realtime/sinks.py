"""Where ``stableface live`` sends frames: a Y4M stream, a virtual camera, a window.

Every sink takes (H, W, 3) uint8 RGB frames at 25 fps. Optional dependencies (pyvirtualcam,
a display for OpenCV's window) are opened lazily, and a missing one raises an error that says
what to install.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import MissingDependencyError, OutputError
from engines.files import partial_path
from engines.timebase import FPS

logger = logging.getLogger(__name__)

ImageRGB = npt.NDArray[np.uint8]
WINDOW_TITLE = "StableFace"


class SinkClosed(OutputError):
    """The viewer ended the output (a closed window, a reader that closed its pipe): a normal end."""


class FrameSink(Protocol):
    """A destination for paced RGB frames."""

    name: str

    def write(self, image: ImageRGB) -> None:
        """Show or store one (H, W, 3) uint8 RGB frame.

        Raises:
            SinkClosed: the viewer went away (a closed pipe, a closed window).
        """

    def close(self) -> None: ...


class AudioSink(Protocol):
    """Takes the session's delayed audio, 40 ms a frame (the virtual microphone)."""

    def write(self, audio: npt.NDArray[np.float32]) -> None:
        """Play (S,) 16 kHz mono float32 samples."""
        ...

    def close(self) -> None: ...


def _even(image: ImageRGB) -> ImageRGB:
    return image[: image.shape[0] & ~1, : image.shape[1] & ~1]


class Y4MSink:
    """YUV4MPEG2 (4:2:0, 25 fps) to a file or to stdout (``-``), for ffmpeg/ffplay/mpv.

    Odd frame sizes are cropped to even (4:2:0 needs even sides).
    """

    def __init__(self, target: str) -> None:
        self.name = "y4m stdout" if target == "-" else f"y4m {target}"
        self._owns = target != "-"
        self._partial: Path | None = None
        self._final: Path | None = None
        if target == "-":
            self._out: BinaryIO = sys.stdout.buffer
        else:
            self._final = Path(target)
            self._partial = partial_path(self._final)
            try:
                self._out = self._partial.open("wb")
            except OSError as exc:
                raise OutputError(f"cannot write {target}: {exc.strerror}") from None
        self._header_written = False
        self.frames = 0

    def write(self, image: ImageRGB) -> None:
        image = _even(image)
        height, width = image.shape[:2]
        try:
            if not self._header_written:
                self._out.write(f"YUV4MPEG2 W{width} H{height} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
                self._header_written = True
            self._out.write(b"FRAME\n")
            self._out.write(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420).tobytes())
            self._out.flush()
        except (BrokenPipeError, ValueError) as exc:  # the reader went away (ValueError: closed file)
            raise SinkClosed("the Y4M reader closed the pipe") from exc
        self.frames += 1

    def close(self) -> None:
        """Finish the file (it appears under its name only now); leave stdout open."""
        if not self._owns:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self._out.flush()
            return
        self._out.close()
        if self._partial is not None and self._final is not None and self._partial.exists():
            if self.frames:
                self._partial.replace(self._final)
            else:
                self._partial.unlink()


class VirtualCameraSink:
    """A virtual webcam any video-call app can pick (pyvirtualcam: v4l2loopback on Linux, OBS
    elsewhere)."""

    def __init__(self, device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError:
            raise MissingDependencyError(
                "the virtual camera needs pyvirtualcam: pip install -e '.[vcam]'"
            ) from None
        self._module = pyvirtualcam
        self._device = device
        self._camera: pyvirtualcam.Camera | None = None
        self.name = "virtual camera"

    def _open(self, width: int, height: int) -> None:
        try:
            self._camera = self._module.Camera(
                width=width,
                height=height,
                fps=FPS,
                fmt=self._module.PixelFormat.RGB,
                device=self._device,
            )
        except RuntimeError as exc:
            hint = (
                "load the v4l2loopback kernel module: sudo modprobe v4l2loopback devices=1 exclusive_caps=1"
                if sys.platform.startswith("linux")
                else "install OBS Studio (its virtual camera) and start it once"
            )
            raise MissingDependencyError(f"no virtual camera device ({exc}); {hint}") from None
        self.name = f"virtual camera {self._camera.device}"
        logger.info("virtual camera %s: %dx%d at %d fps", self._camera.device, width, height, FPS)

    def write(self, image: ImageRGB) -> None:
        if self._camera is None:
            self._open(image.shape[1], image.shape[0])
        assert self._camera is not None
        self._camera.send(np.ascontiguousarray(image))

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None


class WindowSink:
    """An OpenCV window (closing it, or pressing q or Esc, ends ``live``)."""

    def __init__(self) -> None:
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise MissingDependencyError(
                "--window needs a display (DISPLAY is not set); use --y4m - | ffplay -"
            )
        self._open = False
        self.name = "window"

    def write(self, image: ImageRGB) -> None:
        try:
            if not self._open:
                cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_NORMAL)
                self._open = True
            cv2.imshow(WINDOW_TITLE, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
            closed = cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error as exc:
            raise MissingDependencyError(
                f"cannot open a window: {str(exc).strip().splitlines()[-1]}"
            ) from None
        if key in (ord("q"), 27) or closed:
            raise SinkClosed("window closed")

    def close(self) -> None:
        if self._open:
            try:
                cv2.destroyWindow(WINDOW_TITLE)
            except cv2.error as exc:  # the window manager already took it away
                logger.debug("window not destroyed: %s", exc)
