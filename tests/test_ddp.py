"""DDP for one unit: 2 gloo processes on CPU train exactly like one process on the same global batch."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from vfnet.training.ddp import DistributedContext, DistributedError, init_distributed
from vfnet.training.losses import DiceCELoss
from vfnet.training.trainer import Trainer, TrainingConfig

STEPS, BATCH, WORLD = 4, 4, 2


def _batches(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"data": rng.standard_normal((BATCH, 2, 12, 12)).astype(np.float32),
             "target": rng.integers(0, 3, (BATCH, 1, 12, 12))} for _ in range(count)]


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.LeakyReLU(),
                         nn.Conv2d(8, 3, 1))


def _train(out, distributed: DistributedContext | None = None) -> Trainer:
    # batch Dice (pooled over the batch) is the loss that needs the ranks' sums pooled to stay exact
    config = TrainingConfig(iterations=STEPS, lr=0.05, val_every=2)
    trainer = Trainer(_network(), DiceCELoss(), iter(_batches(STEPS)), _batches(1, seed=1), config, out,
                      device="cpu", quiet=True, distributed=distributed)
    trainer.fit()
    return trainer


def _result(trainer: Trainer) -> dict:
    return {"weights": {k: v.detach().clone() for k, v in trainer.network.state_dict().items()},
            "grads": [p.grad.detach().clone() for p in trainer.network.parameters()]}


def _ddp_worker(rank: int, port: int, root) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        trainer = _train(root / f"unit_rank{rank}", context)
        torch.save(_result(trainer), root / f"rank{rank}.pt")
    finally:
        context.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path, one_torch_thread):
    mp.spawn(_ddp_worker, args=(_free_port(), tmp_path), nprocs=WORLD, join=True)
    single = _result(_train(tmp_path / "single"))
    for rank in range(WORLD):
        ddp = torch.load(tmp_path / f"rank{rank}.pt")
        for name, weight in single["weights"].items():
            torch.testing.assert_close(ddp["weights"][name], weight, atol=1e-5, rtol=1e-4, msg=name)
        for grad, expected in zip(ddp["grads"], single["grads"], strict=True):
            torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)
    # the run changed the weights (the comparison is not between two untrained networks)
    assert not torch.allclose(single["weights"]["0.weight"], _network()[0].weight)
    # only rank 0 writes: checkpoints and log there, nothing from rank 1
    assert (tmp_path / "unit_rank0" / "checkpoint_final.pth").is_file()
    assert (tmp_path / "unit_rank0" / "training.log").is_file()
    assert list((tmp_path / "unit_rank1").iterdir()) == []


def test_shard_splits_the_global_batch_and_refuses_uneven_batches(monkeypatch):
    batch = {"data": np.arange(8).reshape(4, 2), "target": np.arange(4), "keys": ["a", "b", "c", "d"]}
    parts = [DistributedContext(rank, 2, rank, torch.device("cpu")).shard(batch) for rank in range(2)]
    assert parts[0]["target"].tolist() == [0, 1] and parts[1]["target"].tolist() == [2, 3]
    assert parts[1]["data"].tolist() == [[4, 5], [6, 7]]
    with pytest.raises(DistributedError, match="multiple of 3"):
        DistributedContext(0, 3, 0, torch.device("cpu")).shard(batch)
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_distributed("cpu")
