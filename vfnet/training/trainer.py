"""A generic, iteration-based training loop shared by the 2D view U-Nets, the VFN and the 3D U-Net.

Training is composition: the trainer takes a network, a loss, an iterator of training
batches, an iterable of validation batches, a :class:`vfnet.training.config.TrainingConfig`
(iterations, learning rate, LR schedule, optimizer) and a device. Nothing here knows about views,
patches or datasets. Batches are dicts with ``"data"`` (B, C, *spatial) and ``"target"``
(B, [1,] *spatial) class indices, as numpy arrays or tensors.

Files in ``out_dir``: ``checkpoint_latest.pth`` (every validation), ``checkpoint_best.pth``
(highest validation pseudo-Dice; a trained one must beat iteration 0's by ``min_gain`` when that is
validated, and with ``min_gain_se`` its per-case gains must be clear of their standard error),
``checkpoint_final.pth`` (end of the schedule), all written atomically; ``training.log``;
``progress.png`` redrawn at every validation.

Example:
    >>> config = TrainingConfig(iterations=1000, lr=0.01, val_every=100)
    >>> trainer = Trainer(net, DiceCELoss(), train_batches, val_batches, config, out_dir, device="cpu")
    >>> trainer.resume()  # False when there is nothing to continue
    >>> history = trainer.fit()
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vfnet.atomic import atomic_path, remove_stale_temporaries
from vfnet.checkpoint import load_checkpoint, plain, rng_state, save_checkpoint, set_rng_state
from vfnet.device import memory_format, resolve_device
from vfnet.errors import CheckpointError
from vfnet.paths import BEST_CHECKPOINT, FINAL_CHECKPOINT, LATEST_CHECKPOINT
from vfnet.training.config import PolyLR, TrainingConfig, sgd_nesterov
from vfnet.training.losses import foreground_counts

if TYPE_CHECKING:
    from vfnet.training.ddp import DistributedContext

CHECKPOINTS = (LATEST_CHECKPOINT, BEST_CHECKPOINT, FINAL_CHECKPOINT)


def pseudo_dice(counts: torch.Tensor) -> float:
    """Mean over foreground classes of 2TP / (2TP + FP + FN) from (3, C_fg) counts; 1 for a class
    absent from both prediction and target."""
    tp, fp, fn = counts
    return float(torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.ones_like(tp)).mean())


def clears_standard_error(gains: np.ndarray, multiple: float) -> bool:
    """Whether the mean of per-case ``gains`` is positive and at least ``multiple`` standard errors
    (sample standard deviation over the square root of their number). One case has no standard error:
    its gain only has to be positive."""
    gains = np.asarray(gains, dtype=np.float64)
    mean = float(gains.mean())
    if len(gains) < 2:
        return mean > 0
    return mean > 0 and mean >= multiple * float(gains.std(ddof=1)) / np.sqrt(len(gains))


def plot_progress(history: list[dict], path: Path) -> None:
    """Draw losses, pseudo-Dice, learning rate and seconds per validation interval into ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Figure + Agg canvas rather than pyplot: no global backend switch, safe in worker threads.
    its = [h["iteration"] for h in history]
    figure = Figure(figsize=(10, 7), tight_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    axes[0, 0].plot(its, [h["train_loss"] for h in history], label="train loss")
    axes[0, 0].plot(its, [h["val_loss"] for h in history], label="validation loss")
    axes[0, 0].legend()
    axes[0, 1].plot(its, [h["val_dice"] for h in history], color="tab:green", marker=".")
    axes[0, 1].set_ylabel("validation pseudo-Dice")
    axes[1, 0].plot(its, [h["lr"] for h in history], color="tab:red")
    axes[1, 0].set_ylabel("learning rate")
    axes[1, 1].plot(its, [h["seconds"] for h in history], color="tab:purple", marker=".", label="seconds")
    axes[1, 1].set_ylabel("seconds per validation interval")
    wait = axes[1, 1].twinx()
    wait.plot(its, [100 * h["data_wait"] for h in history], color="tab:gray", linestyle="--")
    wait.set_ylabel("data wait (% of step time)")
    for ax in axes.flat:
        ax.set_xlabel("iteration")
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    # only for batchgenerators' transforms, which draw from numpy's global RNG; vfnet's samplers own generators
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def saved_iteration(out_dir: Path, name: str = LATEST_CHECKPOINT) -> int:
    """Iteration stored in a checkpoint of ``out_dir``, 0 when there is none."""
    path = Path(out_dir) / name
    if not path.is_file():
        return 0
    return int(load_checkpoint(path)["iteration"])


def _to_tensor(value, device: torch.device, layout: torch.memory_format | None = None) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    tensor = tensor.to(device, non_blocking=True)
    if layout is not None and tensor.dim() == 5:
        tensor = tensor.contiguous(memory_format=layout)
    return tensor


class Trainer:
    """Iteration-based training with validation, checkpoints, resume, a log and a progress plot.

    Args:
        network: the model; moved to ``device``.
        loss: ``loss(logits, target) -> scalar``.
        train_loader: iterator of training batches (never exhausted: ``next`` is called per step).
        val_loader: iterable re-read at every validation (e.g. a fixed list of batches), or None.
        config: schedule and optimizer.
        out_dir: where checkpoints, log and plot go.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``. CUDA trains with mixed precision.
        num_threads: torch CPU threads (CPU only); None leaves torch's default.
        metadata: stored in every checkpoint (e.g. the network's constructor arguments).
        quiet: no progress bar, nothing printed (the log file is still written).
        distributed: this process's place in a DDP job (:mod:`vfnet.training.ddp`): each step trains on
            this rank's share of the batch, gradients are averaged, and only rank 0 writes files.
    """

    def __init__(self, network: nn.Module, loss: Callable, train_loader: Iterator, val_loader: Iterable | None,
                 config: TrainingConfig, out_dir: Path, device: str | torch.device = "auto",
                 num_threads: int | None = None, metadata: dict | None = None, quiet: bool = False,
                 distributed: DistributedContext | None = None):
        self.distributed = distributed
        self.is_main = distributed is None or distributed.is_main
        self.device = distributed.device if distributed is not None else resolve_device(device)
        quiet = quiet or not self.is_main
        self.amp = self.device.type == "cuda"
        if self.amp:
            torch.backends.cudnn.benchmark = True
        elif num_threads:
            torch.set_num_threads(int(num_threads))
        seed_everything(config.seed)
        self.memory_format = memory_format(network, self.device)
        self.network = network.to(self.device)
        if self.memory_format is not None:
            self.network = self.network.to(memory_format=self.memory_format)
        # the network steps train through (DDP's wrapper when distributed); validation uses the plain one
        self.train_network = self.network if distributed is None else distributed.wrap(self.network)
        if distributed is not None:
            distributed.pool_loss(loss)
        self.loss, self.train_loader, self.val_loader = loss, train_loader, val_loader
        self.config, self.out_dir, self.quiet = config, Path(out_dir), quiet
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)  # checkpoints half-written by a killed run
        self.metadata = dict(metadata or {})
        make_optimizer = config.optimizer or sgd_nesterov
        self.optimizer = make_optimizer(self.network.parameters(), config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           config.lr_schedule or PolyLR(config.iterations))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iteration = 0
        self.best_dice = -1.0
        self.history: list[dict] = []
        self.case_dice: list[float] | None = None  # each validation case's pseudo-Dice at the last validation

    # ----------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        """Append to ``training.log`` and, unless quiet, print above the progress bar (rank 0 only)."""
        if not self.is_main:
            return
        line = f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}"
        with open(self.out_dir / "training.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if not self.quiet:
            tqdm.write(message)

    # ------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """Tensors and plain values only, so the checkpoint loads with ``weights_only=True``."""
        return {"iteration": self.iteration, "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": plain_scheduler_state(self.scheduler),
                "scaler": self.scaler.state_dict(), "best_dice": float(self.best_dice),
                "history": plain(self.history), "rng": rng_state(), "config": plain(self.config.describe()),
                "metadata": plain(self.metadata)}

    def save_checkpoint(self, name: str) -> Path:
        path = self.out_dir / name
        if not self.is_main:
            return path
        return save_checkpoint(self.state(), path)

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything needed to go on exactly where ``path`` was written.

        Raises:
            CheckpointError: the file is corrupt or not a training checkpoint; the message names it.
        """
        state = load_checkpoint(path, map_location=self.device)
        try:
            self.network.load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.best_dice = int(state["iteration"]), float(state["best_dice"])
            self.history = list(state["history"])
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} cannot be resumed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]});"
                                  f" delete it to train the unit from the start") from exc

    def resume(self) -> bool:
        """Continue from ``checkpoint_latest.pth`` if it exists; True when something was restored."""
        path = self.out_dir / LATEST_CHECKPOINT
        if not path.is_file():
            return False
        self.load_checkpoint(path)
        self.log(f"resumed from {path.name} at iteration {self.iteration}")
        return True

    # ---------------------------------------------------------------- training
    def train_step(self, batch: dict) -> float:
        if self.distributed is not None:
            batch = self.distributed.shard(batch)
        data, target = _to_tensor(batch["data"], self.device, self.memory_format), _to_tensor(batch["target"], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss = self.loss(self.train_network(data), target)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """(mean loss, pseudo-Dice) over the validation batches; pseudo-Dice pools TP/FP/FN per class.

        Batches that name each item's case (``"case"``, as the VFN's validation tiles do) also give
        each case's pseudo-Dice, kept in ``self.case_dice`` (None otherwise).
        """
        self.case_dice = None
        if self.val_loader is None:
            return float("nan"), float("nan")
        self.network.eval()
        losses, counts, per_case = [], None, {}
        for batch in self.val_loader:
            data = _to_tensor(batch["data"], self.device, self.memory_format)
            target = _to_tensor(batch["target"], self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.network(data)
                losses.append(float(self.loss(logits, target)))
            if "case" in batch:  # counted per item, each added to its case's counts and to the pooled ones
                items = [(int(case), foreground_counts(logits[i:i + 1], target[i:i + 1]))
                         for i, case in enumerate(batch["case"])]
                for case, item in items:
                    per_case[case] = item if case not in per_case else per_case[case] + item
                batch_counts = sum(item for _, item in items)
            else:
                batch_counts = foreground_counts(logits, target)
            counts = batch_counts if counts is None else counts + batch_counts
        self.network.train()
        if counts is None:
            return float("nan"), float("nan")
        if per_case:
            self.case_dice = [pseudo_dice(per_case[case]) for case in sorted(per_case)]
        return float(np.mean(losses)), pseudo_dice(counts)

    def _end_interval(self, train_losses: list[float], interval_start: float, step_seconds: float,
                      wait_seconds: float) -> float:
        """Validate, checkpoint, log and plot; returns when the next interval starts."""
        val_loss, val_dice = self.validate()
        # Steps and validation of this interval; checkpoint and plot time count for the next one.
        next_start = time.perf_counter()
        beats_best = not np.isnan(val_dice) and val_dice > self.best_dice
        short = beats_best and (val_dice < self._start_dice() + self.config.min_gain or not self._clear_gain())
        improved = beats_best and not short
        if improved:
            self.best_dice = val_dice
        entry = {"iteration": self.iteration, "best": improved,
                 "train_loss": float(np.mean(train_losses)) if train_losses else float("nan"),
                 "val_loss": val_loss, "val_dice": val_dice, "lr": self.optimizer.param_groups[0]["lr"],
                 "seconds": next_start - interval_start, "data_wait": wait_seconds / step_seconds if step_seconds > 0 else 0.0}
        if self.case_dice is not None:
            entry["val_case_dice"] = self.case_dice
        self.history.append(entry)
        self.save_checkpoint(LATEST_CHECKPOINT)
        if improved:
            self.save_checkpoint(BEST_CHECKPOINT)
        self.log(f"iteration {self.iteration}/{self.config.iterations}: train loss {entry['train_loss']:.4f}, "
                 f"val loss {val_loss:.4f}, pseudo-Dice {val_dice:.4f}{' (best)' if improved else ''}"
                 f"{f' ({self._shortfall()} above iteration 0: not kept)' if short else ''}, "
                 f"lr {entry['lr']:.2e}, {entry['seconds']:.1f} s, data wait {100 * entry['data_wait']:.1f}%")
        if self.is_main:
            plot_progress(self.history, self.out_dir / "progress.png")
        return next_start

    def _start(self) -> dict | None:
        """The untrained network's validation (validated at start), else None."""
        first = self.history[0] if self.history else None
        if not self.config.validate_at_start or first is None or first["iteration"] != 0:
            return None
        return first

    def _start_dice(self) -> float:
        """The untrained network's validation pseudo-Dice (validated at start), else -inf."""
        start = self._start()
        return -np.inf if start is None else start["val_dice"]

    def _shortfall(self) -> str:
        """Why a better validation was not kept, for the log: the margins it had to clear."""
        if not self.config.min_gain_se:
            return f"less than {self.config.min_gain:.4f}"
        text = f"a mean of less than {self.config.min_gain_se:g} standard errors of the cases' gains"
        return (f"less than {self.config.min_gain:.4f}, or {text}," if self.config.min_gain else text)

    def _clear_gain(self) -> bool:
        """With ``min_gain_se``, whether the cases' mean gain in pseudo-Dice over iteration 0 is at least
        ``min_gain_se`` standard errors of those gains (always true without it, or without per-case
        scores of both, or at iteration 0)."""
        start = self._start()
        if not self.config.min_gain_se or start is None or self.iteration == 0 or self.case_dice is None \
                or "val_case_dice" not in start:
            return True
        return clears_standard_error(np.asarray(self.case_dice) - np.asarray(start["val_case_dice"]),
                                     self.config.min_gain_se)

    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train from the current iteration to the end of the schedule (or up to ``stop_at``).

        Args:
            stop_at: stop after this many iterations with a latest checkpoint (to be resumed).

        Returns:
            The history: one dict per validation (iteration, losses, pseudo-Dice, lr, seconds, data wait share).
        """
        total, every = self.config.iterations, max(1, self.config.val_every)
        end = total if stop_at is None else min(total, stop_at)
        if self.iteration == 0:
            self.log(f"training on {self.device} ({'mixed precision' if self.amp else 'float32'}, "
                     f"{torch.get_num_threads()} CPU threads): {self.config.describe()}")
        self.network.train()
        losses: list[float] = []
        interval_start, step_seconds, wait_seconds = time.perf_counter(), 0.0, 0.0
        if self.iteration == 0 and self.config.validate_at_start and not self.history:
            interval_start = self._end_interval(losses, interval_start, 0.0, 0.0)
        bar = tqdm(total=total, initial=self.iteration, disable=True if self.quiet else None, desc="training", unit="it",
                   dynamic_ncols=True)
        try:
            while self.iteration < end:
                start = time.perf_counter()
                batch = next(self.train_loader)
                waited = time.perf_counter() - start
                losses.append(self.train_step(batch))
                step_seconds += time.perf_counter() - start
                wait_seconds += waited
                self.iteration += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if self.iteration % every == 0 or self.iteration == total:
                    interval_start = self._end_interval(losses, interval_start, step_seconds, wait_seconds)
                    losses, step_seconds, wait_seconds = [], 0.0, 0.0
        finally:
            bar.close()
        if self.iteration >= total:
            self.save_checkpoint(FINAL_CHECKPOINT)
            self.log(f"finished {total} iterations; best pseudo-Dice {self.best_dice:.4f}")
        elif not self.history or self.history[-1]["iteration"] != self.iteration:
            self.save_checkpoint(LATEST_CHECKPOINT)
        return self.history

    def data_wait_share(self) -> float:
        """Share of training-step time spent waiting for batches, over the whole history."""
        if not self.history:
            return 0.0
        return float(np.mean([h["data_wait"] for h in self.history]))


def load_checkpoint_weights(path: Path, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint (weights, metadata, history...) without a trainer, with ``weights_only=True``."""
    return load_checkpoint(path, map_location=resolve_device(device))


def plain_scheduler_state(scheduler) -> dict:
    """A LambdaLR state whose schedule objects (PolyLR, StepLR) are stored as plain attribute dicts."""
    return plain(scheduler.state_dict())
