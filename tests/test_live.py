"""``stableface live`` as a user runs it: a file in, Y4M out (a file, or a pipe into ffmpeg), and
clear one-line errors for every missing device or driver; plus the ``serve`` command's bad input."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from engines.media.encode import write_wav
from offline_training.synthetic.speech import synthesize_speech

STABLEFACE = [sys.executable, "-m", "stableface"]
SPEECH_S = 2.0


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("live") / "speech.wav"
    write_wav(path, synthesize_speech(4, SPEECH_S).audio, 16_000)
    return path


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*STABLEFACE, *args], capture_output=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    return _check_one_line(result.returncode, result.stderr.decode(), *words)


def _cli_error(capfd: pytest.CaptureFixture[str], *args: str, words: tuple[str, ...] = ()) -> str:
    """``stableface ARGS`` in this process (no interpreter start): a one-line error, status 1."""
    from stableface.cli import main

    capfd.readouterr()
    status = main(list(args))
    return _check_one_line(status, capfd.readouterr().err, *words)


def _check_one_line(status: int, stderr: str, *words: str) -> str:
    stderr = stderr.strip()
    assert status == 1, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert "internal error" not in stderr, stderr
    for word in words:
        assert word in stderr, stderr
    return stderr


def _frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


@pytest.mark.realtime
def test_live_writes_a_y4m_file(tiny_avatar: Path, speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "avatar.y4m"
    result = _run("live", "--avatar", str(tiny_avatar), "--audio", str(speech_wav), "--y4m", str(out))
    assert result.returncode == 0, result.stderr.decode()
    count, width, height = _frames(out)
    # the whole file plus the fixed output delay (the last frames carry the delayed end of the speech)
    assert SPEECH_S * 25 <= count <= SPEECH_S * 25 + 10, count
    assert width % 2 == 0 and height % 2 == 0
    assert "ended: end of input" in result.stderr.decode()


@pytest.mark.realtime
def test_live_y4m_on_stdout_pipes_into_ffmpeg(tiny_avatar: Path, speech_wav: Path, tmp_path: Path) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    out = tmp_path / "avatar.mp4"
    live = subprocess.Popen(
        [*STABLEFACE, "live", "--avatar", str(tiny_avatar), "--audio", str(speech_wav), "--y4m", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    encode = subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "yuv4mpegpipe",
            "-i",
            "-",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(out),
        ],
        stdin=live.stdout,
        capture_output=True,
        timeout=120,
    )
    assert live.stdout is not None
    live.stdout.close()
    live.wait(30)
    assert live.returncode == 0, live.stderr.read().decode() if live.stderr else ""
    assert encode.returncode == 0, encode.stderr.decode()
    count, _, _ = _frames(out)
    assert count >= SPEECH_S * 25


@pytest.mark.realtime
def test_a_reader_that_closes_the_pipe_ends_live_cleanly(tiny_avatar: Path, speech_wav: Path) -> None:
    live = subprocess.Popen(
        [*STABLEFACE, "live", "--avatar", str(tiny_avatar), "--audio", str(speech_wav), "--y4m", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert live.stdout is not None and live.stderr is not None
    assert live.stdout.read(200_000)  # a few frames, then the viewer quits
    live.stdout.close()
    live.wait(60)
    stderr = live.stderr.read().decode()
    assert live.returncode == 0 and "Traceback" not in stderr, stderr
    assert "closed the pipe" in stderr


def test_missing_devices_and_drivers_name_what_to_install(
    tiny_avatar: Path, speech_wav: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    common = ["live", "--avatar", str(tiny_avatar), "--audio", str(speech_wav)]
    if not _loopback_devices():
        try:
            import pyvirtualcam  # noqa: F401

            needed = ("v4l2loopback", "modprobe")
        except ImportError:
            needed = ("pyvirtualcam", "pip install")
        _cli_error(capfd, *common, "--virtual-camera", words=needed)
    _cli_error(capfd, *common, words=("--window", "--virtual-camera", "--y4m"))
    y4m = ["--y4m", "-"]
    _cli_error(
        capfd, "live", "--avatar", str(tiny_avatar), "--audio", str(tiny_avatar / "manifest.json"), *y4m
    )
    no_avatar = ["live", "--avatar", "/no/such/avatar", "--audio", str(speech_wav), *y4m]
    _cli_error(capfd, *no_avatar, words=("/no/such/avatar",))
    # A whole process, its error raised inside the running live loop: still one line, no traceback.
    _one_line_error(
        _run("live", "--avatar", str(tiny_avatar), "--mic", "no-such-mic", "--y4m", "-"), "microphone"
    )


def test_window_without_a_display_says_so(
    tiny_avatar: Path, speech_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    _one_line_error(
        _run("live", "--avatar", str(tiny_avatar), "--audio", str(speech_wav), "--window"), "display"
    )


def _loopback_devices() -> list[str]:
    return [
        d for d in glob.glob("/dev/video*") if Path(f"/sys/class/video4linux/{Path(d).name}/name").exists()
    ]


@pytest.mark.realtime
def test_live_feeds_a_virtual_camera(tiny_avatar: Path, speech_wav: Path) -> None:
    devices = _loopback_devices()
    if not devices:
        pytest.skip("no v4l2loopback device (sudo modprobe v4l2loopback devices=1 exclusive_caps=1)")
    pytest.importorskip("pyvirtualcam", reason="pip install -e '.[vcam]'")
    result = _run(
        "live", "--avatar", str(tiny_avatar), "--audio", str(speech_wav), "--virtual-camera", devices[0]
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "ended: end of input" in result.stderr.decode()


def test_serve_refuses_bad_settings_in_one_line(tiny_avatar: Path, capfd: pytest.CaptureFixture[str]) -> None:
    avatar = ["serve", "--avatar", str(tiny_avatar)]
    _cli_error(capfd, *avatar, "--ice-server", "http://example.org", words=("--ice-server",))
    _cli_error(capfd, *avatar, "--cert", "c.pem", words=("--cert and --key",))
    _cli_error(capfd, "serve", "--avatar", "/no/such/avatar", words=("/no/such/avatar",))
    _cli_error(capfd, *avatar, "--port", "70000", words=("--port",))
    # A whole process, refused only once its avatar is loaded: still one line, no traceback.
    _one_line_error(_run(*avatar, "--cert", __file__, "--key", __file__, "--port", "0"), "TLS")
