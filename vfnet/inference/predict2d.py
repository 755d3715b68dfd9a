"""Whole-volume prediction with one view's 2D network, and the held-out maps of a training unit.

Slices are taken along the view in batches, each with its planned context (the same
:func:`vfnet.views.slice_stacks` as in training), and the softmax maps are
restacked into the canonical (z, y, x) layout with :func:`vfnet.views.from_view`. A unit
trained on downsampled volumes (``input_downsample`` in its checkpoint) predicts at that
resolution and its maps are upsampled to the input's grid (:mod:`vfnet.resolution`). Slices
of any size are fine: :class:`vfnet.networks.unet2d.UNet2D` pads them to a multiple of
2^poolings inside its forward pass and crops the logits back. Unless a batch size is given,
the slices per forward pass come from the free memory and the slice size
(:func:`slice_batch_size`); batching does not change the probabilities.

Example:
    >>> net = load_unit_network(unit_dir, plan, "axial", "cpu")
    >>> probs = predict_volume_2d(net, image, "axial", context_slices=3, device="cpu")
    >>> probs.shape == (plan.num_classes, *image.shape[1:])
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import psutil
import torch
from tqdm import tqdm

from vfnet.atomic import atomic_path, write_json
from vfnet.checkpoint import load_checkpoint
from vfnet.errors import ModelNotFoundError
from vfnet.measures.metrics import dice
from vfnet.networks.unet2d import UNet2D, build_unet2d, unet2d_from_config
from vfnet.paths import UnitPaths
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.resolution import downsample_image, normalise_factor, upsample_probabilities
from vfnet.training.units import TrainedUnit
from vfnet.views import from_view, slice_stacks, to_view

MAX_SLICE_BATCH = 256
MEMORY_SHARE = 0.25  # of the free memory, for the activations of one forward pass
# Peak bytes of a forward pass per (first-level channel × padded pixel) of one float32 slice: about
# 8.5 measured on CPU (skip + upsampled + concatenated + conv outputs at full resolution), plus slack.
ACTIVATION_FACTOR = 12
DEFAULT_WIDTH = 32  # first-level width assumed for a network that does not say (a wrapper)


def available_memory(device: str | torch.device) -> int:
    """Bytes free for a forward pass on ``device``: the free GPU memory on CUDA, else the
    available system memory (``MemAvailable``, through psutil)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def slice_batch_size(network: torch.nn.Module, slice_shape: Sequence[int], device: str | torch.device = "cpu",
                     share: float = MEMORY_SHARE, max_batch: int = MAX_SLICE_BATCH) -> int:
    """How many slices of ``slice_shape`` to predict per forward pass, from the free memory.

    One slice costs about ``ACTIVATION_FACTOR × width × H × W × 4`` bytes, where ``width`` is
    the widest of the network's input, first-level and output channels (activations at full
    resolution dominate a U-Net) and H, W are padded to the network's multiple. The batch uses
    at most ``share`` of :func:`available_memory`, clamped to [1, ``max_batch``].

    Args:
        network: the 2D network; ``features``, ``in_channels``, ``num_classes`` and ``divisor``
            are read when it has them (:class:`vfnet.networks.unet2d.UNet2D`).
        slice_shape: (H, W) of the slices as the network gets them.
        device: where the network runs.
        share: fraction of the free memory one forward pass may use.
        max_batch: upper bound.

    Example:
        >>> slice_batch_size(UNet2D(3, 3, [32, 64]), (512, 512), "cpu")  # with 16 GiB free
        10
    """
    features = getattr(network, "features", None) or [DEFAULT_WIDTH]
    width = max(int(features[0]), int(getattr(network, "in_channels", 1)), int(getattr(network, "num_classes", 1)))
    divisor = int(getattr(network, "divisor", 1))
    height, breadth = (-(-int(n) // divisor) * divisor for n in slice_shape)
    per_slice = ACTIVATION_FACTOR * width * height * breadth * 4
    return int(min(max(share * available_memory(device) // per_slice, 1), max_batch))


def load_unit_network(unit_dir: Path, plan: Mapping, view: str, device: str | torch.device = "cpu",
                      checkpoint: str = "checkpoint_final.pth") -> UNet2D:
    """The trained 2D network of a unit folder, in eval mode on ``device``.

    The network is rebuilt from the constructor arguments stored in the checkpoint (so a
    width override used at training time is honoured), else from the plan's view spec.
    """
    return restore_network(Path(unit_dir) / checkpoint,
                           lambda config: unet2d_from_config(config) if config else build_unet2d(plan, view),
                           device, f"vfnet_train 2d {view} {Path(unit_dir).name}")


def restore_network(path: Path, build: Callable[[dict | None], torch.nn.Module], device: str | torch.device,
                    train_hint: str) -> torch.nn.Module:
    """A trained network from checkpoint ``path``, in eval mode on ``device``.

    ``build`` makes the empty network from the constructor arguments the trainer stored in the
    checkpoint's metadata (``network_config``), or from the plan when it gets None.

    Raises:
        ModelNotFoundError: no checkpoint; the message names ``train_hint``, the command that trains it.
    """
    if not Path(path).is_file():
        raise ModelNotFoundError(f"{path} not found; train the unit first with: {train_hint}")
    state = load_checkpoint(path)
    metadata = state.get("metadata", {})
    network = build(metadata.get("network_config"))
    network.load_state_dict(state["network"])
    # the resolution the unit trained at travels with its weights (see vfnet.resolution)
    network.input_downsample = normalise_factor(metadata.get("input_downsample"))
    return network.to(device).eval()


@torch.no_grad()
def predict_volume_2d(network: torch.nn.Module, image: np.ndarray, view: str, context_slices: int,
                      device: str | torch.device = "cpu", batch_size: int | None = None,
                      quiet: bool = True) -> np.ndarray:
    """Softmax probabilities (num_classes, z, y, x) float32 of a canonical image (C, z, y, x).

    Args:
        network: 2D network taking (B, C·context_slices, H, W) and returning logits.
        image: preprocessed image in the canonical layout.
        view: axial, coronal or sagittal.
        context_slices: slices per input stack, as planned.
        device: where the network is; CUDA runs in mixed precision.
        batch_size: slices per forward pass; None: :func:`slice_batch_size` of the view's slices.
        quiet: no progress bar; otherwise a bar over the slices appears when the volume takes
            more than two seconds, and only on a terminal.
    """
    device = torch.device(device)
    image = np.asarray(image, dtype=np.float32)
    factor = normalise_factor(getattr(network, "input_downsample", None))
    image_view = np.ascontiguousarray(to_view(downsample_image(image, factor), view))
    num_slices = image_view.shape[1]
    if batch_size is None:
        batch_size = slice_batch_size(network, image_view.shape[2:], device)
    network.eval()
    out = None
    for begin in tqdm(range(0, num_slices, batch_size), desc=f"{view} slices", unit="batch", leave=False,
                      delay=2, disable=True if quiet else None):
        indices = list(range(begin, min(begin + batch_size, num_slices)))
        inputs = torch.from_numpy(slice_stacks(image_view, indices, context_slices)).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = network(inputs)
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        if out is None:
            out = np.empty((probs.shape[1], num_slices, *probs.shape[2:]), dtype=np.float32)
        out[:, begin:begin + len(indices)] = probs.swapaxes(0, 1)
    return np.ascontiguousarray(upsample_probabilities(from_view(out, view), image.shape[1:]))


def per_class_dice(probabilities: np.ndarray, label: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Dice of the argmax of ``probabilities`` against ``label`` for each foreground class."""
    prediction = probabilities.argmax(0)
    return {name: dice(label == c, prediction == c) for c, name in enumerate(class_names) if c > 0}


def save_probabilities(path: Path, probabilities: np.ndarray) -> None:
    """``<case>.npz`` with key ``probabilities`` as float16, written atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16))


def predict_held_out(network: torch.nn.Module, dataset: PreprocessedDataset, cases: Sequence[str], view: str,
                     context_slices: int, class_names: Sequence[str], unit_dir: Path,
                     device: str | torch.device = "cpu", batch_size: int | None = None, quiet: bool = False,
                     extra: dict | None = None) -> dict:
    """Write ``predictions/<case>.npz`` for every case and ``summary.json`` with the view's own Dice.

    Returns:
        The summary: per case the Dice of each foreground class and their mean, the mean per
        class over cases, and the overall mean (``mean_dice``).
    """
    unit_dir = Path(unit_dir)
    per_case = {}
    for case in tqdm(cases, desc=f"predicting {view}", disable=True if quiet else None, unit="case"):
        image, label = dataset.load(case)
        probabilities = predict_volume_2d(network, image, view, context_slices, device, batch_size)
        save_probabilities(UnitPaths(unit_dir).prediction(case), probabilities)
        scores = per_class_dice(probabilities, np.asarray(label), class_names)
        per_case[case] = {"dice": scores, "mean": float(np.mean(list(scores.values())))}
    foreground = [name for c, name in enumerate(class_names) if c > 0]
    class_means = {name: float(np.mean([v["dice"][name] for v in per_case.values()])) if per_case else None
                   for name in foreground}
    summary = {**(extra or {}), "view": view, "checkpoint": "final", "num_cases": len(per_case),
               "mean_dice": float(np.mean([v["mean"] for v in per_case.values()])) if per_case else None,
               "mean_per_class": class_means, "cases": per_case}
    write_json(UnitPaths(unit_dir).summary, summary)
    return summary


def predict_trained_unit_2d(trained: TrainedUnit) -> dict:
    """The held-out prediction of a 2D unit that has just trained (``after_training`` of
    :func:`vfnet.training.train2d.fit_2d_unit`): its final checkpoint predicts ``predict_cases``."""
    setup, view = trained.setup, trained.view
    network = load_unit_network(setup.out, setup.plan, view, setup.device)
    return predict_held_out(network, trained.data, trained.predict_cases, view,
                            setup.plan.view(view).context_slices, trained.class_names, setup.out,
                            setup.device, None, trained.quiet, extra=trained.metadata)
