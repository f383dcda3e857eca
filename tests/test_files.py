"""The atomic writers: an output appears whole or not at all, and nothing half-written stays."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.errors import OutputError
from engines.files import atomic_directory, atomic_output, exclusive_lock, partial_path, staging_directory


class Interrupted(Exception):
    pass


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_partial_path_is_hidden_beside_the_target_and_keeps_the_suffix(tmp_path: Path) -> None:
    partial = partial_path(tmp_path / "video.mp4")
    assert partial.parent == tmp_path
    assert partial.name.startswith(".video.partial-") and partial.suffix == ".mp4"


def test_atomic_output_replaces_the_target_on_success(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with atomic_output(target) as partial:
        partial.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert _hidden(tmp_path) == []


def test_atomic_output_failure_mid_write_keeps_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(Interrupted), atomic_output(target) as partial:
        partial.write_text("half")
        raise Interrupted
    assert target.read_text() == "old"
    assert _hidden(tmp_path) == []


def test_atomic_output_os_error_is_one_output_error_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "report.json"
    with pytest.raises(OutputError, match=r"report\.json: cannot write"), atomic_output(target) as partial:
        partial.write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out" / "dataset"
    with atomic_directory(target) as staging:
        (staging / "frames").mkdir()
        (staging / "frames" / "0.png").write_bytes(b"png")
        assert not target.exists()
    assert (target / "frames" / "0.png").read_bytes() == b"png"
    assert _hidden(target.parent) == []


def test_atomic_directory_refuses_an_existing_target_unless_replacing(tmp_path: Path) -> None:
    target = tmp_path / "kit"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="already exists"), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_directory(target, replace=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert _hidden(tmp_path) == []


def test_atomic_directory_failure_mid_write_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.mkdir()
    (target / "graph.onnx").write_text("old")
    with pytest.raises(Interrupted), atomic_directory(target, replace=True) as staging:
        (staging / "graph.onnx").write_text("half")
        raise Interrupted
    assert (target / "graph.onnx").read_text() == "old"
    assert _hidden(tmp_path) == []


def test_atomic_directory_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("a file")
    with atomic_directory(target, replace=True) as staging:
        (staging / "a").write_text("a")
    assert target.is_dir() and (target / "a").read_text() == "a"
    assert _hidden(tmp_path) == []


def test_staging_directory_under_a_file_is_one_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write there"), staging_directory(blocker / "out"):
        pass


def test_staging_directory_keeps_what_was_moved_out(tmp_path: Path) -> None:
    with staging_directory(tmp_path / "bundle") as staging:
        (staging / "weights").write_text("w")
        (staging / "weights").rename(tmp_path / "weights")
        (staging / "leftover").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_exclusive_lock_makes_processes_take_turns(tmp_path: Path) -> None:
    target = tmp_path / "export"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from engines.files import exclusive_lock\n"
            f"with exclusive_lock(Path({str(target)!r})):\n"
            "    print('held', flush=True); time.sleep(1.0)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with exclusive_lock(target):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.5, "the lock was taken while the other process held it (for 1 s)"
    assert (tmp_path / ".export.lock").is_file() and not target.exists()
