"""How long and how fast a network trains: :class:`TrainingConfig`, its LR schedules and optimizers,
and the way a plan's :class:`vfnet.experiment_planning.schema.Schedule` becomes one.

Example:
    >>> config = TrainingConfig.from_schedule(plan.schedule("default", "2d"), seed=plan.training.seed)
    >>> config.describe()["optimizer"]
    'sgd(momentum=0.99, nesterov=True, weight_decay=3e-05)'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch

from vfnet.experiment_planning.schema import PolySchedule, Schedule, StepSchedule


class PolyLR:
    """Poly decay ``(1 − iteration / iterations) ** exponent`` (nnU-Net's default)."""

    def __init__(self, iterations: int, exponent: float = 0.9):
        self.iterations, self.exponent = int(iterations), float(exponent)

    def __call__(self, iteration: int) -> float:
        return max(0.0, 1 - iteration / self.iterations) ** self.exponent


class StepLR:
    """Multiply by ``gamma`` at each fraction of the schedule (the VFN paper: ÷10 at 2/3 and 5/6)."""

    def __init__(self, iterations: int, fractions: Sequence[float] = (2 / 3, 5 / 6), gamma: float = 0.1):
        self.milestones = [round(f * iterations) for f in fractions]
        self.gamma = float(gamma)

    def __call__(self, iteration: int) -> float:
        return self.gamma ** sum(iteration >= m for m in self.milestones)


def sgd(params: Iterable, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum (Nesterov's or plain)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def sgd_nesterov(params: Iterable, lr: float, momentum: float = 0.99, weight_decay: float = 3e-5):
    """SGD with Nesterov momentum (nnU-Net's): the optimizer of a config that names none."""
    return sgd(params, lr, momentum, True, weight_decay)


def adamw(params: Iterable, lr: float, weight_decay: float = 3e-5):
    """AdamW: on the shared Hippocampus it learns far faster than SGD in short (quick) schedules."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def schedule_optimizer(schedule: Schedule) -> Callable:
    """``(params, lr) -> optimizer`` as the schedule names it (``sgd`` with its momentum, or ``adam``: AdamW)."""
    if schedule.optimizer == "adam":
        return partial(adamw, weight_decay=schedule.weight_decay)
    return partial(sgd, momentum=schedule.momentum, nesterov=schedule.nesterov, weight_decay=schedule.weight_decay)


def schedule_lr(schedule: PolySchedule | StepSchedule, iterations: int) -> PolyLR | StepLR:
    """The learning-rate factor per iteration of a plan's ``lr_schedule`` over ``iterations``."""
    if isinstance(schedule, StepSchedule):
        return StepLR(iterations, schedule.fractions, schedule.gamma)
    return PolyLR(iterations, schedule.exponent)


def _name(function: Callable | None, default: str) -> str:
    if function is None:
        return default
    if isinstance(function, partial):
        arguments = ", ".join(f"{k}={v}" for k, v in function.keywords.items())
        return f"{function.func.__name__}({arguments})"
    return getattr(function, "__name__", "custom")


@dataclass
class TrainingConfig:
    """How long and how fast to train.

    Args:
        iterations: optimizer steps in the whole schedule.
        lr: initial learning rate.
        val_every: iterations between validations (and latest checkpoints).
        lr_schedule: factor of ``lr`` per iteration; None means :class:`PolyLR` over ``iterations``.
        optimizer: ``(params, lr) -> torch.optim.Optimizer``; None means :func:`sgd_nesterov`.
        grad_clip: max gradient norm, None for no clipping.
        seed: seeds python, numpy and torch when the trainer is made.
        validate_at_start: also validate (and keep a best checkpoint) before the first step, so
            an untrained network that is already good (the VFN's view prior) can win.
        min_gain: with ``validate_at_start``, the pseudo-Dice (0-1) a trained checkpoint must add to
            the untrained network's before it becomes the best one (0: any gain).
        min_gain_se: with ``validate_at_start`` and validation batches that name their cases, a trained
            checkpoint must also raise the cases' pseudo-Dice over the untrained network's by a mean
            of at least this many standard errors of those per-case gains (0: no such test).
    """

    iterations: int
    lr: float = 0.01
    val_every: int = 250
    lr_schedule: Callable[[int], float] | None = None
    optimizer: Callable | None = None
    grad_clip: float | None = 12.0
    seed: int = 12345
    validate_at_start: bool = False
    min_gain: float = 0.0
    min_gain_se: float = 0.0

    @classmethod
    def from_schedule(cls, schedule: Schedule, **overrides) -> TrainingConfig:
        """From a plan's schedule (``plan.schedule(preset, network)``): iterations, learning rate and its
        schedule, optimizer, clipping and validation; ``overrides`` replace any of them (``seed``)."""
        values = {"iterations": schedule.iterations, "lr": schedule.lr, "val_every": schedule.val_every,
                  "grad_clip": schedule.grad_clip, "validate_at_start": schedule.validate_at_start, **overrides}
        values.setdefault("lr_schedule", schedule_lr(schedule.lr_schedule, values["iterations"]))
        values.setdefault("optimizer", schedule_optimizer(schedule))
        return cls(**values)

    def describe(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("lr_schedule", "optimizer")}
        out["lr_schedule"] = type(self.lr_schedule).__name__ if self.lr_schedule else "PolyLR"
        out["optimizer"] = _name(self.optimizer, "sgd_nesterov")
        return out
