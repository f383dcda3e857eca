"""The command line: help for every command, honest placeholders, the synthetic generator."""

from __future__ import annotations

import pytest

from engines.media.decode import probe_media
from stableface.cli import build_parser, main

COMMANDS = [
    "prepare",
    "train",
    "render",
    "export",
    "synth",
    "serve",
    "live",
    "bench",
    "build-default",
    "eval",
    "ablate",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out) > 80


def test_the_top_level_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_synth_writes_a_playable_video_and_refuses_to_overwrite(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "face.mp4"
    assert main(["synth", "--out", str(out), "--seconds", "2", "--size", "128"]) == 0
    info = probe_media(out)
    assert info.has_video and info.has_audio and (info.width, info.height) == (128, 128)
    assert abs(info.video_duration_s - 2.0) < 0.1
    assert main(["synth", "--out", str(out), "--seconds", "2"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_usage_errors_exit_with_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "video.mp4", "--size", "-3", "--out", "x"])
    assert exit_info.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_train_and_render_refuse_bad_input_in_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
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
