"""Benchmark scripts run in their quick mode so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_prepare_speed_quick_writes_json_and_markdown(tmp_path: Path) -> None:
    module = _load("prepare_speed")
    assert module.main(["--quick", "--results", str(tmp_path)]) == 0
    [result_file] = tmp_path.glob("prepare_speed-*-quick.json")
    result = json.loads(result_file.read_text())
    summary = result["summary"]
    assert summary["frames"] == 100 and summary["frames_per_s_overall"] > 0
    track = summary["stages"]["track"]
    assert track["calls"] == 100 and track["ms_per_call_p50"] <= track["ms_per_call_p99"]
    assert (tmp_path / result_file.name.replace(".json", ".md")).read_text().startswith("# prepare speed")


def test_train_speed_quick_counts_flops_of_every_preset(tmp_path: Path) -> None:
    module = _load("train_speed")
    assert module.main(["--quick", "--results", str(tmp_path)]) == 0
    [result_file] = tmp_path.glob("train_speed-*-quick.json")
    presets = json.loads(result_file.read_text())["presets"]
    assert presets["tiny"]["training"]["train_frames_per_s_p50"] > 0
    flops = {name: row["flops"]["renderer_gflop_per_frame"] for name, row in presets.items()}
    assert flops["tiny"] < flops["small"] < flops["paper"]
    assert 80 < flops["paper"] < 130  # DESIGN.md: about 100 GFLOP a rendered frame for the paper preset


def test_backends_quick_times_both_cpu_backends(tmp_path: Path) -> None:
    module = _load("backends")
    assert module.main(["--quick", "--results", str(tmp_path)]) == 0
    [result_file] = tmp_path.glob("backends-*-quick.json")
    rows = json.loads(result_file.read_text())["rows"]
    assert {row["backend"] for row in rows} == {"torch-cpu", "onnxruntime-cpu"}
    for row in rows:
        latency = row["chunk_total_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        assert row["frames_per_s"] > 0 and row["renderer_gflop_per_chunk"] > 0
    assert result_file.with_suffix(".png").stat().st_size > 1000
    assert result_file.with_suffix(".md").read_text().startswith("# backend speed")


def test_ceiling_quick_bounds_every_preset_by_compute_and_memory(tmp_path: Path) -> None:
    module = _load("ceiling")
    assert module.main(["--quick", "--results", str(tmp_path)]) == 0
    [result_file] = tmp_path.glob("ceiling-*-quick.json")
    result = json.loads(result_file.read_text())
    peak = result["peak"]
    assert peak["gflop_per_s_best"] >= peak["gflop_per_s_median"] > 0
    assert peak["gbyte_per_s_best"] >= peak["gbyte_per_s_median"] > 0
    assert [row["preset"] for row in result["rows"]] == ["tiny"]
    for row in result["rows"]:
        assert row["gflop_per_frame"] > 0 and row["weight_mbytes"] > 0
        # No reuse: every weight is read at least once a chunk, so at least its share of a frame.
        assert row["mbytes_per_frame"] > row["weight_mbytes"] / row["chunk_frames"]
        assert row["ceiling_fps"] == min(row["compute_bound_fps"], row["memory_bound_fps"]) > 0
        assert row["bound"] in {"compute", "memory"}
    assert result_file.with_suffix(".png").stat().st_size > 1000
    assert result_file.with_suffix(".md").read_text().startswith("# ")
    assert module.frame_cost("paper")["gflop_per_frame"] > module.frame_cost("small")["gflop_per_frame"]
