"""The command line as a user meets it (``python -m stableface`` in a subprocess): help for every
command naming its key options, usage errors, one-line errors for bad input, the synthetic
generator."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from engines.bundle_paths import DEFAULT_AVATAR_DIR
from engines.media.decode import probe_media
from stableface.cli import main

# Each command and options its help must name.
COMMANDS = {
    "prepare": ["--out", "--size", "--tracker", "--overwrite"],
    "train": ["--out", "--preset", "--steps", "--resume", "--device"],
    "render": ["--out", "--causal", "--backend", "--no-ai-mark"],
    "export": ["--backend", "--chunk", "--overwrite"],
    "synth": ["--out", "--seconds", "--seed", "--size"],
    "serve": ["--avatar", "--port", "--max-sessions", "--token", "--cert", "--key"],
    "live": ["--avatar", "--mic", "--audio", "--window", "--virtual-camera", "--virtual-mic", "--y4m"],
    "bench": ["latency", "throughput", "ceiling"],
    "build-default": ["--out", "--seed", "--renderer-steps"],
    "eval": ["--reference", "--audio", "--json", "--tracker"],
    "ablate": ["--out", "--preset", "--steps", "--variants"],
    "pipecat-demo": ["--avatar", "--say", "--port", "--backend"],
}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stableface", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _one_line_error(result: subprocess.CompletedProcess[str], command: str, *words: str) -> str:
    """Exit status 1, one line on stderr naming the command, no traceback, nothing on stdout."""
    err = result.stderr.strip()
    assert result.returncode == 1, (result.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"stableface {command}: error: "), err
    for word in words:
        assert word in err, err
    assert not result.stdout.strip(), result.stdout
    return err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_explains_itself(command: str) -> None:
    result = _run(command, "--help")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert result.stdout.startswith(f"usage: stableface {command}"), result.stdout[:200]
    for option in COMMANDS[command]:
        assert option in result.stdout, (command, option)
    example = result.stdout.split("example: ")[-1].split()
    assert example[:2] == ["stableface", command], result.stdout[-300:]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_commands_example_is_a_valid_command_line(command: str) -> None:
    import shlex

    from stableface.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    epilog = subparsers.choices[command].epilog
    assert epilog is not None and epilog.startswith("example: stableface ")
    words = shlex.split(epilog.removeprefix("example: stableface "))
    if "default" in words and not (DEFAULT_AVATAR_DIR / "avatar.json").is_file():
        pytest.skip("the example names the bundled default avatar, which this checkout lacks")
    parser.parse_args(words)  # exits (failing the test) on an unknown option or a missing argument


def test_the_top_level_help_lists_every_command_and_no_other() -> None:
    result = _run("--help")
    assert result.returncode == 0
    listed = result.stdout.split("<command>", 2)[2].split("options:")[0]
    names = [line.split()[0] for line in listed.splitlines() if line.strip() and not line[:5].isspace()]
    assert sorted(names) == sorted(COMMANDS), names


@pytest.mark.parametrize(
    "args, words",
    [
        (["prepare", "video.mp4", "--size", "-3", "--out", "x"], ["--size", "must be positive"]),
        (["prepare", "video.mp4"], ["--out"]),
        (["bench", "nonsense"], ["invalid choice"]),
        (["no-such-command"], ["invalid choice"]),
    ],
)
def test_usage_errors_exit_with_two_and_show_the_usage(args: list[str], words: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("usage: stableface"), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert all(word in last for word in words), last


def test_bad_input_is_one_line_on_stderr_and_exit_one(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    _one_line_error(
        _run("prepare", missing, "--out", tmp_path / "ds"), "prepare", str(missing), "no such file"
    )
    assert not (tmp_path / "ds").exists()
    _one_line_error(_run("eval", missing, "--tracker", "mediapipe"), "eval", "no such file")
    _one_line_error(
        _run("ablate", tmp_path / "nothing", "--out", tmp_path / "o", "--tracker", "mediapipe"),
        "ablate",
        "no such dataset",
    )
    _one_line_error(_run("export", tmp_path), "export", str(tmp_path), "not an avatar")
    existing = tmp_path / "taken.mp4"
    existing.write_bytes(b"keep")
    _one_line_error(_run("synth", "--out", existing, "--seconds", "1"), "synth", "already exists")
    assert existing.read_bytes() == b"keep"
    missing = tmp_path / "no-such-folder" / "face.mp4"
    _one_line_error(_run("synth", "--out", missing, "--seconds", "1"), "synth", "cannot write")
    unwritable_audio = tmp_path / "no-such-folder" / "speech.wav"
    video = tmp_path / "face.mp4"
    result = _run("synth", "--out", video, "--audio-out", unwritable_audio, "--seconds", "1")
    _one_line_error(result, "synth", "cannot write")
    assert not video.exists() and not list(tmp_path.glob(".*partial*")), "nothing half-written"


def test_synth_writes_a_playable_video(tmp_path: Path) -> None:
    out = tmp_path / "face.mp4"
    assert main(["synth", "--out", str(out), "--seconds", "2", "--size", "128"]) == 0
    info = probe_media(out)
    assert info.has_video and info.has_audio and (info.width, info.height) == (128, 128)
    assert abs(info.video_duration_s - 2.0) < 0.1


def test_train_and_render_refuse_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "avatar"), "--preset", "tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a complete avatar dataset" in err
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "a"), "--device", "cuda:7"]) == 1
    capsys.readouterr()
    assert (
        main(["render", str(tmp_path), str(tmp_path / "speech.wav"), "--out", str(tmp_path / "v.mp4")]) == 1
    )
    assert "not an avatar" in capsys.readouterr().err


def test_the_preset_choices_are_the_model_presets() -> None:
    from engines.nets import PRESETS
    from stableface.argtypes import PRESET_NAMES

    assert set(PRESET_NAMES) == set(PRESETS)


def test_render_takes_the_bundled_default_avatar_by_name(tmp_path: Path) -> None:
    import numpy as np

    from engines.media.encode import write_wav
    from offline_training.synthetic.speech import synthesize_speech
    from stableface.argtypes import avatar_folder

    speech = tmp_path / "speech.wav"
    write_wav(speech, synthesize_speech(5, 1.2).audio.astype(np.float32))
    out = tmp_path / "default.mp4"
    assert main(["render", "default", str(speech), "--out", str(out), "-q"]) == 0
    info = probe_media(out)
    assert info.has_video and info.has_audio and abs(info.video_duration_s - 1.2) < 0.1
    assert avatar_folder("some/folder") == Path("some/folder")  # anything else is a folder, as before


def test_a_new_users_defaults_steady_the_pose_and_augment_the_voice() -> None:
    from offline_training.dataset.settings import PrepareSettings
    from offline_training.train.settings import TrainSettings
    from stableface.cli import build_parser

    parser = build_parser()
    prepare = parser.parse_args(["prepare", "talk.mp4", "--out", "ds"])
    assert prepare.pose_steadying == PrepareSettings.model_fields["pose_steadying"].default == 0.5
    train = parser.parse_args(["train", "ds", "--out", "avatar"])
    assert train.no_voice_augmentation is False
    assert TrainSettings.model_fields["voice_augmentation"].default is True
