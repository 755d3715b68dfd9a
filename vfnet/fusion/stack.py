"""``stack`` fusion: a learned 1×1×1 weighting of the three views' class maps.

Per voxel, the logits of class c are ``Σ_v Σ_k W[c, v, k] · log p_v(k) + b[c]`` over the
views v and their class probabilities p_v(k), a multinomial logistic regression fitted on
the same fusion set as the VFN of that fold (cross-entropy, L-BFGS, on a sample of ROI
voxels). It can reweight views per class but sees no neighbourhood: the ceiling of
reweighting alone, and the cheap baseline a VFN must beat. Started from equal weights it is
the product of the views' probabilities (log-mean fusion).

The voxel sample (its seed and size) is the plan's (``fusion.stack_seed``,
``fusion.stack_max_voxels``). Files: ``<results>/<Task>/<preset>/stack/<unit>/stack.json``
(weights, bias, the cases it was fitted on and its training loss).

Example:
    >>> weights = fit_stack(fusion_set_folder, cases, num_image_channels=1, num_classes=3, seed=12345,
    ...                     max_voxels=200_000)
    >>> labels = fuse("stack", view_probs, model=weights)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vfnet.atomic import read_json, write_json
from vfnet.device import read_tensor
from vfnet.errors import VfnetError
from vfnet.networks.stack import EPSILON, fit_stack_samples
from vfnet.paths import fusion_set_dir
from vfnet.views import VIEWS


def _read_samples(folder: Path, cases: Sequence[str]) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for case in cases:
        with np.load(Path(folder) / f"{case}.npz") as archive:
            yield archive["inputs"], archive["label"]


def fit_stack(folder: Path, cases: Sequence[str], num_image_channels: int, num_classes: int, *, seed: int,
              max_voxels: int) -> dict:
    """Fit the stack weights on a seeded sample of at most ``max_voxels`` voxels of the fusion-set samples
    ``<folder>/<case>.npz`` of ``cases`` (an equal share per case)."""
    return fit_stack_samples(_read_samples(folder, cases), cases, num_image_channels, num_classes, seed=seed,
                             max_voxels=max_voxels)


def stack_logits(view_probs: Mapping[str, np.ndarray], weights: Mapping) -> torch.Tensor:
    """The stack's class logits (K, z, y, x) of the views' maps (K, z, y, x) under ``weights``.

    One view at a time through one float32 buffer: the view's maps copied in (converted from float16 on
    torch's threads), clipped, logged in place (numpy's vectorised log, faster here than torch's) and added
    through its block of the weights; no (3·K, N) feature matrix and no float32 copy of every view. The
    caller's maps are only read. In development, the labels of a synthetic (5, 37, 256, 256) case of float32
    maps on 2 threads: 0.09 s against 0.18 s with the feature matrix.
    """
    missing = [view for view in VIEWS if view not in view_probs]
    if missing:
        raise VfnetError(f"fusion 'stack' weighs the maps of all three views; {', '.join(missing)} missing")
    first = view_probs[VIEWS[0]]
    k = first.shape[0]
    weight = torch.tensor(weights["weight"], dtype=torch.float32)
    logits = torch.tensor(weights["bias"], dtype=torch.float32)[:, None].repeat(1, first[0].size)
    buffer = torch.empty_like(logits)
    logs = buffer.numpy()
    for i, view in enumerate(VIEWS):
        buffer.copy_(read_tensor(np.asarray(view_probs[view])).reshape(k, -1))
        buffer.clamp_(EPSILON, 1.0)
        np.log(logs, out=logs)
        logits.addmm_(weight[:, i * k:(i + 1) * k], buffer)
    return logits.view(first.shape)


def stack_probabilities(view_probs: Mapping[str, np.ndarray], weights: Mapping) -> np.ndarray:
    """Fused probabilities (K, z, y, x) of the views' maps under ``weights``."""
    return torch.softmax(stack_logits(view_probs, weights), dim=0).numpy()


def stack_path(results: Path, preset: str, unit: str) -> Path:
    return Path(results) / preset / "stack" / str(unit) / "stack.json"


def load_stack(results: Path, preset: str, unit: str) -> dict | None:
    path = stack_path(results, preset, unit)
    return read_json(path) if path.is_file() else None


def fit_unit_stack(preprocessed: Path, results: Path, preset: str, unit: str, num_image_channels: int,
                   num_classes: int, *, seed: int, max_voxels: int) -> dict | None:
    """Fit (or read) the stack of VFN unit ``unit`` from its fusion set (see :func:`fit_stack`); None when
    there is no fusion set."""
    existing = load_stack(results, preset, unit)
    if existing is not None:
        return existing
    folder = fusion_set_dir(preprocessed, preset, unit)
    if not (folder / "manifest.json").is_file():
        return None
    cases = sorted(read_json(folder / "manifest.json")["cases"])
    weights = fit_stack(folder, cases, num_image_channels, num_classes, seed=seed, max_voxels=max_voxels)
    write_json(stack_path(results, preset, unit), weights)
    return weights
