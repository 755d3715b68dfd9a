"""Sliding-window inference of a 3D network over a volume: the VFN inside its ROI and the 3D U-Net.

Example:
    >>> probs = sliding_window_probabilities(net, volume, [64, 64, 64], [32, 32, 32], mirror_axes=())
    >>> probs.shape == (num_classes, *volume.shape[1:])
    True
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from vfnet.device import memory_format
from vfnet.networks.vfn import vfn_probabilities
from vfnet.windows import window_grid, window_weights


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _place(model: torch.nn.Module, device: torch.device, layout: torch.memory_format | None) -> None:
    """Move ``model`` to ``device`` and ``layout`` unless it is there already (walking every module to
    find out costs a lone Hippocampus window a few percent of its time)."""
    params = list(model.parameters())
    if any(p.device != device for p in params):
        model.to(device)
    if layout is not None and any(p.dim() == 5 and not p.is_contiguous(memory_format=layout) for p in params):
        model.to(memory_format=layout)


@functools.lru_cache(maxsize=16)
def _weights(patch: tuple[int, ...], weighting: str, device: torch.device) -> torch.Tensor:
    """:func:`vfnet.windows.window_weights` on ``device``, computed once per patch (never written to)."""
    return torch.from_numpy(window_weights(patch, weighting)).to(device)


def _window_probabilities(model: torch.nn.Module, batch: torch.Tensor, raw: bool = False) -> torch.Tensor:
    return model(batch).float() if raw else vfn_probabilities(model(batch)).float()


def sliding_window_probabilities(model: torch.nn.Module, volume: np.ndarray, patch_size: Sequence[int],
                                 stride: Sequence[int], weighting: str = "gaussian", batch_size: int = 4,
                                 device: str | torch.device | None = None, quiet: bool = True,
                                 mirror_axes: Sequence[int] = (), raw: bool = False) -> np.ndarray:
    """Probabilities (num_classes, z, y, x) of ``model`` over a (C, z, y, x) volume at least one patch large.

    Windows of ``patch_size`` at ``stride`` cover the volume; overlapping outputs are averaged
    with ``weighting`` weights (:func:`vfnet.windows.window_weights`). Logits become
    probabilities with :func:`vfnet.networks.vfn.vfn_probabilities` (a softmax; a one-channel
    head gives (1 − p, p)). Runs in batches of ``batch_size`` windows on ``device`` (None: the
    model's), with fp16 autocast on CUDA, in the layout :func:`vfnet.device.memory_format` picks
    (channels last for the VFN, also on CPU). With ``mirror_axes`` (spatial axes, 0 z, 1 y, 2 x;
    test-time augmentation, asked for explicitly, e.g. ``vfnet_predict --tta``) every window also
    runs mirrored along each of those axes and the outputs are averaged. A batch holding a single
    window runs alone: the VFN's and the 3D U-Net's convolutions (:class:`vfnet.networks.conv.Conv3d`)
    take oneDNN's path for it on the CPU. With ``raw`` the model's outputs (logits) are averaged as they
    are, without the softmax. The model's train/eval mode is restored afterwards.
    """
    patch = [int(p) for p in patch_size]
    if any(s < p for s, p in zip(volume.shape[1:], patch)):
        raise ValueError(f"volume {volume.shape[1:]} is smaller than the patch {patch}; pad it first")
    device = torch.device(device) if device is not None else _device_of(model)
    layout = memory_format(model, device)
    _place(model, device, layout)
    windows = window_grid(volume.shape[1:], patch, stride)
    weights = _weights(tuple(patch), weighting, device)
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)
    total = norm = None  # made with the first batch that needs them (a lone window does not)
    autocast = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
                else contextlib.nullcontext())
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode(), autocast:
            for first in tqdm(range(0, len(windows), batch_size), desc="windows", leave=False, delay=2,
                              disable=True if quiet else None):
                chunk = windows[first:first + batch_size]
                batch = torch.stack([tensor[(slice(None), *w)] for w in chunk])
                if layout is not None:
                    batch = batch.contiguous(memory_format=layout)
                probs = _window_probabilities(model, batch, raw)
                for axis in mirror_axes:
                    probs = probs + _window_probabilities(model, batch.flip(axis - 3), raw).flip(axis - 3)
                probs = probs / (1 + len(mirror_axes))
                if len(windows) == 1:  # one window covers the volume: its weights would divide out
                    return probs[0].cpu().numpy()
                if total is None:
                    total = torch.zeros((probs.shape[1], *volume.shape[1:]), device=device)
                    norm = torch.zeros(volume.shape[1:], device=device)
                for window, p in zip(chunk, probs):
                    total[(slice(None), *window)] += p * weights
                    norm[window] += weights
    finally:
        if was_training:
            model.train()
    return (total / norm).cpu().numpy()
