"""The optimizer's state as a checkpoint file, so ``--resume`` continues with Adam's moments and the
learning-rate schedule where training stopped. Tensors go to safetensors (``state.<param>.<key>``);
the small rest (hyperparameters, step counts) to the manifest."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.manifest import OptimizerRecord

OPTIMIZER_FILE = "optimizer.safetensors"


def save_optimizer_state(optimizer: torch.optim.Optimizer, scheduler, path: Path) -> OptimizerRecord:
    """Write the tensors to ``path``; returns the manifest's record of the rest."""
    state = optimizer.state_dict()
    tensors = {
        f"state.{index}.{key}": value.detach().cpu().contiguous()
        for index, entries in state["state"].items()
        for key, value in entries.items()
        if isinstance(value, torch.Tensor)
    }
    save_file(tensors, path)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in state["param_groups"]]
    return OptimizerRecord(file=path.name, param_groups=groups, scheduler_last_epoch=scheduler.last_epoch)


def load_optimizer_state(optimizer: torch.optim.Optimizer, scheduler, path: Path, saved: OptimizerRecord) -> None:
    """Restore what ``save_optimizer_state`` wrote (same model config, so the same parameter order)."""
    entries: dict[int, dict] = {}
    for name, value in load_file(path).items():
        _, index, key = name.split(".", 2)
        entries.setdefault(int(index), {})[key] = value
    current = optimizer.state_dict()
    groups = [{**group, "params": old["params"]} for group, old in zip(saved.param_groups, current["param_groups"])]
    optimizer.load_state_dict({"state": entries, "param_groups": groups})
    scheduler.last_epoch = saved.scheduler_last_epoch
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
