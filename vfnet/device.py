"""The torch device a command runs on (one rule for training, inference and prediction)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from vfnet.errors import VfnetError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; asking for CUDA without one is a user error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VfnetError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return device


def memory_format(network: torch.nn.Module, device: torch.device) -> torch.memory_format | None:
    """The layout a network and its 5D batches run in: ``channels_last_3d`` or None (the default).

    Channels last for a 3D network on CUDA (cuDNN's fast half-precision kernels want it; measured
    in benchmarks/results/gpu.md), and on CPU for a network that says it gains there
    (``cpu_channels_last = True``: the VFN, whose BatchNorm convolutions take oneDNN's
    channels-last path; on 2 cores a training step 2.2× faster, a prediction window 1.5×:
    benchmarks/results/vfn_layout.md). The
    instance-normed U-Nets lose time with it on CPU (2D 0.73×, 3D 0.95×) and keep the default layout.
    """
    if not any(isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) for m in network.modules()):
        return None
    if torch.device(device).type == "cuda" or getattr(network, "cpu_channels_last", False):
        return torch.channels_last_3d
    return None


def read_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor on ``array``'s memory, to be read only (copied only where numpy's strides are negative)."""
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only array (a memory map) is fine: never written
        return torch.from_numpy(array)
