"""Whole-volume prediction with the 3D U-Net baseline, and the held-out maps of a 3D training unit.

The volume is padded to at least one patch, covered by windows of the planned patch at the
planned stride (``plan.unet3d.stride``: half a patch, nnU-Net's overlap), and the softmax
outputs of overlapping windows are averaged with Gaussian weights, by the same sliding window
as the VFN (:func:`vfnet.inference.sliding_window.sliding_window_probabilities`), mirrored
only along the axes ``mirror_axes`` names (test-time augmentation: ``plan.unet3d.mirror_axes``).

Example:
    >>> net = load_unit_network_3d(unit_dir, plan, "cpu")
    >>> probs = predict_volume_3d(net, image, plan.unet3d.patch_size, plan.unet3d.stride, device="cpu")
    >>> probs.shape == (plan.num_classes, *image.shape[1:])
    True
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vfnet.atomic import write_json
from vfnet.errors import VfnetError
from vfnet.experiment_planning.settings import stride_for_step
from vfnet.inference.predict2d import per_class_dice, restore_network, save_probabilities
from vfnet.inference.sliding_window import sliding_window_probabilities
from vfnet.networks.unet3d import UNet3D, build_unet3d
from vfnet.paths import FINAL_CHECKPOINT, UnitPaths
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.train3d import train_hint
from vfnet.training.units import TrainedUnit
from vfnet.windows import pad_to_size


def load_unit_network_3d(unit_dir: Path, plan: Mapping, device: str | torch.device = "cpu",
                         checkpoint: str = FINAL_CHECKPOINT, hint: str | None = None) -> UNet3D:
    """The trained 3D U-Net of a unit folder, in eval mode on ``device``.

    Rebuilt from the constructor arguments stored in the checkpoint (a width override used at
    training time is honoured), else from the plan.

    Args:
        unit_dir: ``<results>/<preset>/3d/<unit>``.
        plan: a :class:`vfnet.experiment_planning.plans.Plan` or the plans.json dict.
        device: where the network goes.
        checkpoint: file name inside ``unit_dir``.
        hint: the command that trains the unit, for the error message.
    """
    return restore_network(Path(unit_dir) / checkpoint,
                           lambda config: UNet3D(**config) if config else build_unet3d(
                               plan, len(plan["channel_names"]), int(plan["num_classes"])),
                           device, hint or f"vfnet_train 3d {Path(unit_dir).name}")


def window_stride(patch_size: Sequence[int], step_size: float) -> list[int]:
    """Step between windows as nnU-Net's ``--step-size``: a fraction of the patch (0.5 = half-patch overlap)."""
    if not 0 < step_size <= 1:
        raise VfnetError(f"step size {step_size:g} must be in (0, 1]: a fraction of the patch between windows")
    return stride_for_step(patch_size, step_size)


@torch.no_grad()
def predict_volume_3d(network: torch.nn.Module, image: np.ndarray, patch_size: Sequence[int], stride: Sequence[int],
                      device: str | torch.device = "cpu", batch_size: int = 2, mirror_axes: Sequence[int] = (),
                      quiet: bool = True) -> np.ndarray:
    """Softmax probabilities (num_classes, z, y, x) float32 of a preprocessed canonical image (C, z, y, x).

    Args:
        network: 3D network returning logits (N, num_classes, *patch).
        image: preprocessed image.
        patch_size: planned window (z, y, x); smaller volumes are padded with 0 and cropped back.
        stride: step between windows (z, y, x): the planned ``plan.unet3d.stride``, or
            :func:`window_stride` of a step size.
        device: where to run; CUDA runs in mixed precision.
        batch_size: windows per forward pass.
        mirror_axes: also predict the volume mirrored along every combination of these axes (0 z,
            1 y, 2 x) and average (test-time augmentation; all three: 8× the time).
        quiet: no progress bar over the windows.
    """
    padded, back = pad_to_size(np.asarray(image, dtype=np.float32), patch_size)
    patch = [int(p) for p in patch_size]
    dims = sorted(int(a) + 1 for a in mirror_axes)  # the spatial axes of the (C, z, y, x) volume
    flips = [()] + [combo for n in range(1, len(dims) + 1) for combo in combinations(dims, n)]
    total = None
    for axes in flips:
        volume = np.ascontiguousarray(np.flip(padded, axes)) if axes else padded
        probs = sliding_window_probabilities(network, volume, patch, [int(s) for s in stride],
                                             batch_size=batch_size, device=device, quiet=quiet)
        probs = np.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    return np.ascontiguousarray((total / len(flips))[(slice(None), *back)], dtype=np.float32)


def predict_held_out_3d(network: torch.nn.Module, dataset: PreprocessedDataset, cases: Sequence[str],
                        patch_size: Sequence[int], stride: Sequence[int], class_names: Sequence[str], unit_dir: Path,
                        device: str | torch.device = "cpu", quiet: bool = False, extra: dict | None = None) -> dict:
    """Write ``predictions/<case>.npz`` for every case and ``summary.json`` with Dice and seconds per case.

    Returns:
        The summary: per case the Dice of each foreground class, their mean and the seconds the
        prediction took; the mean per class, the overall mean (``mean_dice``) and
        ``seconds_per_case`` (network time only, reading and writing excluded).
    """
    unit_dir = Path(unit_dir)
    per_case = {}
    for case in tqdm(cases, desc="predicting 3d", disable=True if quiet else None, unit="case"):
        image, label = dataset.load(case, mmap=False)
        start = time.perf_counter()
        probabilities = predict_volume_3d(network, image, patch_size, stride, device)
        seconds = time.perf_counter() - start
        save_probabilities(UnitPaths(unit_dir).prediction(case), probabilities)
        scores = per_class_dice(probabilities, np.asarray(label), class_names)
        per_case[case] = {"dice": scores, "mean": float(np.mean(list(scores.values()))), "seconds": seconds}
    foreground = [name for c, name in enumerate(class_names) if c > 0]
    class_means = {name: float(np.mean([v["dice"][name] for v in per_case.values()])) if per_case else None
                   for name in foreground}
    summary = {**(extra or {}), "checkpoint": "final", "num_cases": len(per_case),
               "mean_dice": float(np.mean([v["mean"] for v in per_case.values()])) if per_case else None,
               "mean_per_class": class_means,
               "seconds_per_case": float(np.mean([v["seconds"] for v in per_case.values()])) if per_case else None,
               "cases": per_case}
    write_json(UnitPaths(unit_dir).summary, summary)
    return summary


def predict_trained_unit_3d(trained: TrainedUnit) -> dict:
    """The held-out prediction of a 3D unit that has just trained (``after_training`` of
    :func:`vfnet.training.train3d.fit_3d_unit`): its final checkpoint predicts ``predict_cases``."""
    setup = trained.setup
    network = load_unit_network_3d(setup.out, setup.plan, setup.device,
                                   hint=train_hint(setup.preprocessed.name, trained.metadata["unit"],
                                                  trained.metadata["preset"]))
    unet3d = setup.plan.unet3d
    return predict_held_out_3d(network, trained.data, trained.predict_cases, unet3d.patch_size, unet3d.stride,
                               trained.class_names, setup.out, setup.device, trained.quiet, extra=trained.metadata)
