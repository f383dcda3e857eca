"""``benchmarks/gpu_check.sh``, the GPU machine's one prepared command, rehearsed on the CPU with
``--dry-run`` (the same code, tiny shapes) so it cannot rot: every section must run and report
numbers (or say why not), and a machine without CUDA must be told so in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SECTIONS = {
    "a": "environment",
    "b": "parity",
    "c": "renderer",
    "d": "sessions",
    "e": "stages",
    "f": "loopback",
    "g": "memory",
    "h": "training",
}


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _run_script(*arguments: str, scratch: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(scratch)}
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _numbers(value: Any) -> int:
    """How many numbers (not booleans) a JSON value holds."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return 1
    if isinstance(value, dict):
        return sum(_numbers(item) for item in value.values())
    if isinstance(value, list):
        return sum(_numbers(item) for item in value)
    return 0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    scratch = tmp_path_factory.mktemp("gpu_check")
    out = scratch / "report"
    return _run_script("--dry-run", "--out", str(out), scratch=scratch), out


@pytest.mark.realtime  # live sessions and a real WebRTC call, paced by the clock
def test_dry_run_reports_every_section_with_numbers_or_a_reason(
    dry_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    completed, out = dry_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert sorted(report["sections"]) == sorted(SECTIONS)
    for key, entry in report["sections"].items():
        assert entry["name"] == SECTIONS[key]
        assert entry["status"] != "failed", (key, entry.get("reason"), entry.get("traceback"))
        if entry["status"] in ("ok", "partial"):
            assert _numbers(entry["result"]) > 0, (key, entry)
        else:
            assert entry["reason"], (key, entry)
    assert report["elapsed_s"] < report["budget_s"]


@pytest.mark.realtime  # live sessions and a real WebRTC call, paced by the clock
def test_dry_run_measures_what_each_section_is_for(
    dry_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = dry_run
    sections = json.loads((out / "gpu-check.json").read_text())["sections"]
    assert sections["a"]["result"]["cuda_available"] is False
    parity = sections["b"]["result"]
    assert parity["backends"][0]["max_abs_diff"]["frames"] == 0.0  # the CPU against itself
    [stream] = parity["streams"]
    assert stream["frames"] > 0 and stream["uint8_max_diff"] == 0
    for row in sections["c"]["result"]["rows"]:
        assert 0 < row["renderer_ms"]["p50"] <= row["renderer_ms"]["p99"] and row["achieved_over_ceiling"] > 0
    [sessions] = sections["d"]["result"]["rows"]
    assert sessions["steps"] and all(step["frames"] > 0 for step in sessions["steps"])
    for row in sections["e"]["result"]["rows"]:
        assert set(row["stage_ms_per_batch"]) == {
            "audio2expression",
            "smoothing",
            "raster",
            "renderer",
            "paste",
        }
    loopback = sections["f"]["result"]
    assert loopback["frames_received"] > 0
    assert loopback["latency_budget_ms"]["total_ms"] == loopback["pipeline_delay_ms"]
    assert loopback["probe_correlation_held_out"] is not None
    if loopback["lips"] == "measured":
        assert loopback["audio_in_to_lips_out_ms"]["p50"] > 0
    else:
        assert loopback["lips"].startswith("not measured: ")
    memory = sections["g"]["result"]
    assert memory["session_state_mb_computed"] > 0 and [row["sessions"] for row in memory["rows"]] == [1, 2]
    [training] = sections["h"]["result"]["rows"]
    assert training["preset"] == "tiny" and training["batch"] == 2 and training["train_frames_per_s_p50"] > 0


@pytest.mark.realtime  # live sessions and a real WebRTC call, paced by the clock
def test_dry_run_writes_the_markdown_report(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = dry_run
    text = (out / "gpu-check.md").read_text()
    assert text.startswith("# GPU check")
    for key in SECTIONS:
        assert f"\n## {key}. " in text


def test_without_cuda_it_says_so_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU run would start")
    completed = _run_script("--out", str(tmp_path / "report"), scratch=tmp_path)
    assert completed.returncode == 3
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], completed.stderr
    assert not (tmp_path / "report").exists()


def test_capacity_search_doubles_then_bisects() -> None:
    search_capacity = _gpu_check().search_capacity

    def capacity(limit: int) -> Any:
        return lambda count: {"sessions": count, "real_time": count <= limit}

    found = search_capacity(capacity(13), 4, 48, lambda seconds: True)
    assert [step["sessions"] for step in found["steps"]] == [4, 8, 16, 12, 14, 13]
    assert (found["max_real_time_sessions"], found["first_failing"], found["complete"]) == (13, 14, True)
    found = search_capacity(capacity(100), 4, 48, lambda seconds: True)
    assert [step["sessions"] for step in found["steps"]] == [4, 8, 16, 32, 48]
    assert (found["max_real_time_sessions"], found["first_failing"]) == (48, None)
    found = search_capacity(capacity(0), 4, 48, lambda seconds: True)
    assert [step["sessions"] for step in found["steps"]] == [4, 2, 1]
    assert found["max_real_time_sessions"] == 0
    # coarse where counts are large: within an eighth of the passing count
    found = search_capacity(capacity(40), 4, 48, lambda seconds: True)
    assert found["max_real_time_sessions"] == 40 and found["first_failing"] - 40 <= 40 // 8
    # the budget: room for the first step (expected to take 0 s) and no more; no room at all
    found = search_capacity(capacity(100), 4, 48, lambda seconds: seconds <= 0)
    assert len(found["steps"]) == 1 and found["complete"] is False
    found = search_capacity(capacity(100), 4, 48, lambda seconds: False)
    assert found["steps"] == [] and found["max_real_time_sessions"] == 0 and found["complete"] is False


def test_a_stuck_section_is_stopped_by_the_alarm() -> None:
    import time

    gpu_check = _gpu_check()
    started = time.monotonic()
    with pytest.raises(gpu_check.SectionTimeout), gpu_check.alarm_after(0.2):
        time.sleep(5)
    assert time.monotonic() - started < 2
