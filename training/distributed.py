"""Data-parallel training across processes: PyTorch DistributedDataParallel under ``torchrun``
(gloo on the CPU, NCCL on CUDA, one GPU per process).

Every process holds the whole (small, in-memory) data set and walks the same shuffled global
batches; process r computes rows r, r + W, r + 2W, ... of each (what ``DistributedSampler`` hands
out when the batch is a multiple of W, without its padding), so the union of the shards is exactly
the single-process batch. The dequantization noise is drawn for the whole batch on every process
and sliced the same way. Each process weights its part of every mean of the objective by its share
of the batch's rows in that group (``models.hybrid.LossShares``), so the all-reduced gradient is
the single-process gradient of the whole batch, labeled and unlabeled groups included. ActNorm's
data-dependent initialisation sees the same rows on every process (and DDP broadcasts rank 0's
parameters at the start). Validation runs on every process on identical weights (the same early
stopping everywhere); the head fit, the gate calibration, the test metrics and the checkpoint are
rank 0's alone.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from models.hybrid import HybridModel, LossShares


@dataclass(frozen=True)
class Cluster:
    """This process's place among ``world_size`` training processes (rank 0 alone: no cluster)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """The process's own GPU (``cuda:LOCAL_RANK``) when training on CUDA."""
        if device.type == "cuda" and self.distributed:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """This process's rows (r::W) of each whole-batch tensor."""
        return [tensor[self.rank :: self.world_size] for tensor in tensors]

    def shares(self, labeled: torch.Tensor) -> LossShares | None:
        """This process's shares of a whole batch with ``labeled`` ``(N,)`` rows (None alone)."""
        if not self.distributed:
            return None
        (mine,) = self.shard(labeled)
        share = lambda part, whole: self.world_size * part / whole if whole else 0.0  # noqa: E731
        return LossShares(
            rows=share(len(mine), len(labeled)),
            labeled=share(int(mine.sum()), int(labeled.sum())),
            unlabeled=share(int((~mine).sum()), int((~labeled).sum())),
        )

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every process's loss is finite (all skip the step together, or none does)."""
        finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def mean(self, value: float) -> float:
        """The average of ``value`` over the processes."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return float(total) / self.world_size


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class LossModule(nn.Module):
    """The hybrid model's training loss as a module's forward, which DDP wraps (its gradient
    all-reduce hooks run on the backward of what forward returns)."""

    def __init__(self, model: HybridModel):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model.loss(*args, **kwargs)


def data_parallel(model: HybridModel, cluster: Cluster, partly_labeled: bool) -> nn.Module:
    """The loss module, in DDP across the cluster. ``partly_labeled``: a process's shard may hold no
    labeled row, leaving the head unused on it for a step (DDP must then look for unused parameters)."""
    module = LossModule(model)
    if not cluster.distributed:
        return module
    device_ids = [cluster.local_rank] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=partly_labeled)


@contextmanager
def launched(device: torch.device) -> Iterator[Cluster]:
    """The cluster torchrun started this process in (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), its
    process group joined for the block (NCCL on CUDA, else gloo); alone without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Cluster()
        return
    cluster = Cluster(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield cluster
    finally:
        dist.destroy_process_group()


def local_processes() -> int:
    """Training processes on this machine (``LOCAL_WORLD_SIZE`` under torchrun, else 1)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
