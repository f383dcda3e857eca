"""A virtual microphone on the desktop's sound server (PulseAudio, or PipeWire's pulse server).

``stableface live --virtual-mic`` sends the session's delayed audio here, so a video-call app takes
the camera (``--virtual-camera``) and the microphone from the avatar, lips and voice together.

On open it loads two modules into the running server with ``pactl``: a null sink that the audio
plays into (``<name>_sink``) and a source remapped from that sink's monitor (``<name>``,
described as "StableFace microphone"), which apps list as a microphone. The audio is written to
the sink by a ``pacat`` process (16 kHz mono s16, 20 ms target latency). On close both modules are
unloaded, so nothing is left behind; ``with`` blocks do that on errors too.

Needs ``pactl`` and ``pacat`` (Debian/Ubuntu: ``apt install pulseaudio-utils``) and a sound server
to talk to; without one it fails with a one-line error, before the avatar is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from types import TracebackType

import numpy as np
import numpy.typing as npt

from engines.errors import InputError, MissingDependencyError, OutputError
from engines.timebase import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
DEFAULT_NAME = "stableface_mic"
DESCRIPTION = "StableFace microphone"
LATENCY_MS = 40
# Silence queued ahead of the first write, so a writer a little late (audio comes in 40 ms blocks)
# never lets the stream run dry; as much audio is skipped at the start, so the cushion adds no
# delay. (Queued when the microphone opened, it had played out by the time a call began, and any
# lateness then added to the voice's delay for good.)
CUSHION_MS = 40
# A writer later than this behind its own timeline (the time since its first write against the
# audio it has written) may have let the stream run dry (a 30 ms late write added 30 ms to the
# voice's delay for good, cushion or not; measured against PulseAudio 16): what it owes is dropped
# and the stream starts again as at the first write, so the voice does not stay that late behind
# the lips for the rest of the call.
CATCH_UP_MS = 20
PACTL_TIMEOUT_S = 10.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingDependencyError(
            f"the virtual microphone needs {name} (apt install pulseaudio-utils; PipeWire systems: "
            "pipewire-pulse and pulseaudio-utils)"
        )
    return path


def _pactl(*arguments: str) -> str:
    """Run ``pactl``; its stdout.

    Raises:
        InputError: no sound server answers, or it refused the command.
    """
    try:
        done = subprocess.run(
            [_tool("pactl"), *arguments], capture_output=True, text=True, timeout=PACTL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise InputError("the sound server did not answer pactl within 10 s") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise InputError(f"pactl {arguments[0]}: {reason[-1] if reason else 'failed'}")
    return done.stdout.strip()


def sound_server_running() -> bool:
    """Whether a PulseAudio-protocol sound server answers (``pactl info``)."""
    try:
        _pactl("info")
    except (InputError, MissingDependencyError):
        return False
    return True


class PulseVirtualMicrophone:
    """A virtual microphone that plays 16 kHz mono float32 audio.

    Args:
        name: the source's name (apps show its description, "StableFace microphone").

    Attributes:
        dropped_ms: audio dropped so far to catch up with a writer that fell behind.

    Raises:
        MissingDependencyError: pactl or pacat is not installed.
        InputError: no sound server is running, or the name is taken.
    """

    def __init__(self, name: str = DEFAULT_NAME) -> None:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"virtual microphone name {name!r}: use letters, digits, _ and -")
        pacat = _tool("pacat")
        try:
            _pactl("info")
        except InputError as error:
            raise InputError(f"no PulseAudio/PipeWire sound server is running ({error})") from None
        self.name = name
        self.sink = f"{name}_sink"
        existing = _pactl("list", "short", "sources").split()
        if name in existing:
            raise InputError(f"a source named {name} already exists; choose another with --virtual-mic NAME")
        self._modules: list[str] = []
        self._player: subprocess.Popen[bytes] | None = None
        self._skip = round(CUSHION_MS * SAMPLE_RATE_HZ / 1000)
        self._first_write_at: float | None = None
        self.dropped_ms = 0.0
        self._accounted = 0  # samples given to write() so far, played or dropped
        try:
            self._modules.append(
                _pactl(
                    "load-module",
                    "module-null-sink",
                    f"sink_name={self.sink}",
                    f"rate={SAMPLE_RATE_HZ}",
                    "channels=1",
                    f"sink_properties=device.description={DESCRIPTION.replace(' ', '_')}_output",
                )
            )
            self._modules.append(
                _pactl(
                    "load-module",
                    "module-remap-source",
                    f"master={self.sink}.monitor",
                    f"source_name={name}",
                    f"source_properties=device.description={DESCRIPTION.replace(' ', '_')}",
                )
            )
            self._player = subprocess.Popen(
                [
                    pacat,
                    "--playback",
                    f"--device={self.sink}",
                    "--format=s16le",
                    f"--rate={SAMPLE_RATE_HZ}",
                    "--channels=1",
                    f"--latency-msec={LATENCY_MS}",
                    "--raw",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            self._restart_sink_clock()
        except BaseException:
            self.close()
            raise
        logger.info("virtual microphone %s (%s) ready", name, DESCRIPTION)

    def _restart_sink_clock(self) -> None:
        """Suspend and resume the new sink once the player is connected.

        A null sink starts rendering in 2 s blocks and its first wake-up comes 2 s after it was
        loaded, however low a latency its streams ask for later; audio written meanwhile waits in
        the player's pipe and the whole call would then run 2 s late. Resuming restarts its clock
        at the latency the player asked for.
        """
        deadline = time.monotonic() + PACTL_TIMEOUT_S
        while self.sink_input_id() is None:
            if self._player is not None and self._player.poll() is not None:
                raise InputError("pacat could not play into the virtual microphone's sink")
            if time.monotonic() > deadline:
                raise InputError("pacat did not connect to the sound server within 10 s")
            time.sleep(0.02)
        _pactl("suspend-sink", self.sink, "1")
        _pactl("suspend-sink", self.sink, "0")

    def sink_input_id(self) -> str | None:
        """The player's stream on the sink (None until it has connected)."""
        sinks = {
            fields[0]: fields[1]
            for fields in (line.split() for line in _pactl("list", "short", "sinks").splitlines())
        }
        for line in _pactl("list", "short", "sink-inputs").splitlines():
            fields = line.split()
            if len(fields) > 1 and sinks.get(fields[1]) == self.sink:
                return fields[0]
        return None

    def write(self, audio: FloatArray) -> None:
        """Play (S,) 16 kHz mono float32 samples in [-1, 1].

        The writes are one continuous stream in real time from the first (as ``live`` writes each
        output frame's audio at its due time, overdue ones back to back). A writer more than
        CATCH_UP_MS behind that timeline has the audio it owes dropped, so a pause in the writes is
        not a pause in the stream: write silence through it.

        Raises:
            OutputError: the player stopped (the sound server went away).
        """
        self._catch_up(time.monotonic())
        self._accounted += len(audio)
        if self._skip:
            skipped = min(self._skip, len(audio))
            audio = audio[skipped:]
            self._skip -= skipped
        self._play(audio)

    def _catch_up(self, now: float) -> None:
        """Queue the cushion at the first write. Later, when the writer has fallen more than
        CATCH_UP_MS behind its timeline, drop what it owes and start again as at the first write."""
        cushion = CUSHION_MS * SAMPLE_RATE_HZ // 1000
        if self._first_write_at is None:
            self._first_write_at = now
            self._play(np.zeros(cushion, np.float32))  # self._skip starts at the cushion
            return
        owed = round((now - self._first_write_at) * SAMPLE_RATE_HZ) - self._accounted - self._skip
        if owed > CATCH_UP_MS * SAMPLE_RATE_HZ // 1000:
            dropped = owed + cushion
            logger.info(
                "virtual microphone: the audio came %.0f ms late; dropping %.0f ms to catch up",
                1000 * owed / SAMPLE_RATE_HZ,
                1000 * dropped / SAMPLE_RATE_HZ,
            )
            self._skip += dropped
            self.dropped_ms += 1000 * dropped / SAMPLE_RATE_HZ
            self._play(np.zeros(cushion, np.float32))

    def _play(self, audio: FloatArray) -> None:
        player = self._player
        if player is None or player.stdin is None:
            raise OutputError("the virtual microphone is closed")
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        try:
            player.stdin.write(pcm)
            player.stdin.flush()
        except (BrokenPipeError, OSError):
            detail = b""
            if player.stderr is not None:
                with contextlib.suppress(OSError):
                    detail = player.stderr.read() or b""
            message = detail.decode(errors="replace").strip().splitlines()
            raise OutputError(
                f"the virtual microphone stopped: {message[-1] if message else 'pacat exited'}"
            ) from None

    def close(self) -> None:
        """Stop playing and unload the modules (safe to call twice)."""
        player, self._player = self._player, None
        if player is not None:
            with contextlib.suppress(OSError):
                if player.stdin is not None:
                    player.stdin.close()
            try:
                player.wait(timeout=2)
            except subprocess.TimeoutExpired:
                player.kill()
                player.wait()
            if player.stderr is not None:
                player.stderr.close()
        while self._modules:
            module = self._modules.pop()
            try:
                _pactl("unload-module", module)
            except (InputError, MissingDependencyError) as error:
                logger.warning("could not unload module %s: %s", module, error)

    def __enter__(self) -> PulseVirtualMicrophone:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
