"""The torch device a command runs on (one rule for training, inference and prediction)."""

from __future__ import annotations

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
