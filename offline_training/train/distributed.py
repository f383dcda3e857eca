"""Running under ``torchrun``: process group, rank-aware seeding, module wrapping."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    world_size: int
    rank: int
    device: torch.device

    @classmethod
    def from_environment(cls, device: str) -> DistributedContext:
        """Join the process group torchrun describes in the environment (a single process otherwise).

        CUDA processes use NCCL and one GPU each (``LOCAL_RANK``); CPU processes use gloo.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        chosen = torch.device(device)
        if chosen.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            chosen = torch.device("cuda", local if world_size > 1 else (chosen.index or 0))
            torch.cuda.set_device(chosen)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(world_size=world_size, rank=rank, device=chosen)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as DistributedDataParallel when there is more than one process."""
        if self.world_size == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def from_main(self, values: list[float]) -> list[float]:
        """The main process's ``values`` on every process (so all take the same decision)."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, 0)
        return [float(value) for value in tensor.tolist()]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    assert isinstance(inner, nn.Module)
    return inner
