"""Where each render worker runs: one GPU each (round robin over the GPUs this server may use),
or, on a CPU, its own group of the cores this server may run on.

A worker's placement is applied in the worker process before torch or ONNX Runtime is imported:
``CUDA_VISIBLE_DEVICES`` names its one GPU (so it sees ``cuda:0``), and its CPU affinity is its
group of cores (ONNX Runtime sizes its thread pool to the cores a process may run on; torch is
told the same number). A single worker keeps everything the server has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class Placement:
    """One worker's share of the machine.

    Attributes:
        cores: CPU cores it may run on (None: the server's own).
        gpu: its ``CUDA_VISIBLE_DEVICES`` entry (None: as the server's).
    """

    cores: tuple[int, ...] | None
    gpu: str | None


def visible_gpus(environment: dict[str, str] | None = None, driver_dir: Path = NVIDIA_GPUS) -> list[str]:
    """The GPUs this server may use: ``CUDA_VISIBLE_DEVICES`` if set, else the NVIDIA driver's list
    (``/proc/driver/nvidia/gpus``), as ``CUDA_VISIBLE_DEVICES`` entries; none without a driver."""
    environment = dict(os.environ) if environment is None else environment
    listed = environment.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    try:
        count = len(list(driver_dir.iterdir()))
    except OSError:
        return []
    return [str(index) for index in range(count)]


def place_workers(workers: int, cores: list[int], gpus: list[str]) -> list[Placement]:
    """Each of ``workers`` workers' placement: GPUs round robin when there are any (and the cores
    shared), else contiguous groups of ``cores`` (a worker beyond the cores shares the last)."""
    if workers <= 1:
        return [Placement(None, None)] * max(workers, 0)
    if gpus:
        return [Placement(None, gpus[number % len(gpus)]) for number in range(workers)]
    ordered = sorted(cores)
    groups = []
    for number in range(workers):
        low = number * len(ordered) // workers
        high = max((number + 1) * len(ordered) // workers, low + 1)
        groups.append(Placement(tuple(ordered[min(low, len(ordered) - 1) : high]), None))
    return groups


def apply_placement(placement: Placement) -> None:
    """In the worker process, before the models' libraries are imported."""
    if placement.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = placement.gpu
    if placement.cores is not None:
        os.sched_setaffinity(0, placement.cores)
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(len(placement.cores))


def server_cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0))
