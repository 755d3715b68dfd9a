"""One unit on several processes (``vfnet_train ... --ddp`` under ``torchrun``): PyTorch DDP.

Every rank draws the same seeded global batch and trains on its own contiguous share of it
(what a DistributedSampler does for a dataset, here for each batch); DistributedDataParallel
averages the gradients. The batch Dice loss pools its sums over all ranks (a differentiable
all-reduce), so a step equals a single-process step on the global batch. Only rank 0 writes
checkpoints, logs, plots, held-out predictions and summaries; every rank validates the same
cases, so all take the same decisions.

Example (two GPUs, or two CPU processes with gloo)::

    torchrun --standalone --nproc-per-node 2 $(which vfnet_train) 2d axial 0 -d 4 --preset default --ddp

Example:
    >>> context = init_distributed("cpu")   # inside a process that torchrun started
    >>> context.rank, context.world_size
    (0, 2)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vfnet.errors import VfnetError
from vfnet.training.losses import SoftDiceLoss


class DistributedError(VfnetError):
    """``--ddp`` outside torchrun, or a batch that does not split evenly between the ranks."""


@dataclass
class DistributedContext:
    """This process's place in a torchrun job.

    Args:
        rank: 0..world_size-1; rank 0 writes every file.
        world_size: processes training the unit.
        local_rank: rank on this machine (its GPU on CUDA).
        device: ``cuda:<local_rank>`` with NCCL, else ``cpu`` with gloo.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: dict) -> dict:
        """This rank's contiguous share of a global batch (``data`` and ``target``; other keys unchanged)."""
        size = len(batch["data"])
        if size % self.world_size:
            raise DistributedError(f"a batch of {size} does not split between {self.world_size} processes; "
                                   f"use a batch size that is a multiple of {self.world_size}")
        share = size // self.world_size
        part = slice(self.rank * share, (self.rank + 1) * share)
        return {**batch, "data": batch["data"][part], "target": batch["target"][part]}

    def wrap(self, network: nn.Module) -> nn.Module:
        """The network under DistributedDataParallel (weights broadcast from rank 0)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=ids)

    def pool_loss(self, loss: nn.Module) -> nn.Module:
        """Make every batch-Dice term of ``loss`` sum its statistics over all ranks while training."""
        for module in loss.modules():
            if isinstance(module, SoftDiceLoss) and module.batch_dice:
                module.pool = sum_over_ranks
        return loss

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks forward; backward sums the ranks' gradients too (every rank's loss uses the pooled sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) that gradients flow through: each rank gets the gradient of the pooled sum."""
    return _SumOverRanks.apply(tensor)


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).

    Raises:
        DistributedError: the variables are missing (the command was not started by torchrun).
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(f"--ddp needs the variables torchrun sets ({', '.join(missing)} missing); start "
                               "with: torchrun --standalone --nproc-per-node 2 $(which vfnet_train) 2d axial 0 "
                               "-d 4 --ddp")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return DistributedContext(rank, world, local_rank, torch_device)
