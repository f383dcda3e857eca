"""Training checkpoints as safetensors: module weights, optimizer states and the trainer's counters.

Optimizer state dicts are nested; their tensors are flattened into ``optim/<name>/<param>/<key>``
and everything else (param groups, step counters, random state) travels as JSON in the metadata.
No pickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from engines.errors import InputError
from engines.files import atomic_output


def save_checkpoint(
    path: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
) -> None:
    """Write a checkpoint atomically (:func:`engines.files.atomic_output`)."""
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model/{name}/{key}"] = value.detach().cpu().contiguous()
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        groups[name] = state["param_groups"]
        for param_id, values in state["state"].items():
            for key, value in values.items():
                tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"optim/{name}/{param_id}/{key}"] = tensor.detach().cpu().contiguous()
    metadata = {"meta": json.dumps(meta), "param_groups": json.dumps(groups)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as partial:
        save_file(tensors, str(partial), metadata)


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> dict[str, Any]:
    """Restore modules and optimizers from ``path``; returns the saved ``meta``.

    Optimizers missing from the checkpoint keep their fresh state (a new stage starts).

    Raises:
        InputError: unreadable or incompatible checkpoint.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path}: unreadable checkpoint ({exc})") from exc
    for name, module in modules.items():
        prefix = f"model/{name}/"
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            try:
                module.load_state_dict(state)
            except RuntimeError as exc:
                raise InputError(
                    f"{path}: {name} does not match this config ({str(exc).splitlines()[0]})"
                ) from exc
    groups = json.loads(metadata.get("param_groups", "{}"))
    for name, optimizer in optimizers.items():
        if name not in groups:
            continue
        prefix = f"optim/{name}/"
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                param_id, field = key.removeprefix(prefix).split("/", 1)
                per_param.setdefault(int(param_id), {})[field] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": groups[name]})
    meta: dict[str, Any] = json.loads(metadata.get("meta", "{}"))
    return meta


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest ``step-*.safetensors`` in ``folder``, or None."""
    found = sorted(folder.glob("step-*.safetensors"))
    return found[-1] if found else None
