"""The 2D view U-Net: a plain U-Net whose depth and widths come from the plan.

Each stage is two (3×3 conv → norm → LeakyReLU) blocks; the encoder goes down with a
stride-2 first conv (or a 2×2 max-pool), the decoder up with a 2×2 stride-2 transposed conv
and concatenates the skip of the same scale. ``len(features)`` stages make
``len(features) − 1`` down-samplings. Inputs of any height and width are accepted: the
forward pass pads them to a multiple of 2^poolings and crops the logits back, so whole
slices can be predicted without the caller padding.

Example:
    >>> net = build_unet2d(plan, "axial")
    >>> net(torch.zeros(2, net.in_channels, 37, 51)).shape
    torch.Size([2, 3, 37, 51])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfnet.networks.conv import InstanceNorm2d
from vfnet.views import check_view


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm '{kind}'; expected instance or batch")


class ConvBlock(nn.Sequential):
    """3×3 conv → norm → LeakyReLU (no conv bias: the norm has its own shift)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, stride: int = 1):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         _norm(norm, out_channels), nn.LeakyReLU(0.01, inplace=True))


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two axes of ``x`` at their ends up to a multiple of ``divisor``.

    Returns:
        The padded tensor and the original (height, width), to crop back with.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % divisor, (-width) % divisor
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x, (height, width)


class UNet2D(nn.Module):
    """Plain 2D U-Net returning logits (B, num_classes, H, W).

    Args:
        in_channels: context slices × image channels.
        num_classes: background + foreground classes.
        features: widths per stage, e.g. [32, 64, 128, 256] (4 stages, 3 poolings).
        norm: ``instance`` (default) or ``batch``.
        downsample: ``conv`` (stride-2 first conv of a stage) or ``maxpool``.
    """

    def __init__(self, in_channels: int, num_classes: int, features: Sequence[int], norm: str = "instance",
                 downsample: str = "conv"):
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"a U-Net needs at least 2 stages, got features {list(features)}")
        if downsample not in ("conv", "maxpool"):
            raise ValueError(f"unknown downsample '{downsample}'; expected conv or maxpool")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.features, self.norm, self.downsample = [int(f) for f in features], norm, downsample
        self.divisor = 2 ** (len(features) - 1)
        self.encoder = nn.ModuleList()
        previous = self.in_channels
        for stage, width in enumerate(self.features):
            stride = 2 if stage > 0 and downsample == "conv" else 1
            layers = [nn.MaxPool2d(2)] if stage > 0 and downsample == "maxpool" else []
            layers += [ConvBlock(previous, width, norm, stride), ConvBlock(width, width, norm)]
            self.encoder.append(nn.Sequential(*layers))
            previous = width
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(self.features[:-1]):
            self.upsample.append(nn.ConvTranspose2d(previous, width, 2, stride=2, bias=False))
            self.decoder.append(nn.Sequential(ConvBlock(2 * width, width, norm), ConvBlock(width, width, norm)))
            previous = width
        self.head = nn.Conv2d(previous, self.num_classes, 1)

    def config(self) -> dict:
        """Constructor arguments, stored in checkpoints so a network can be rebuilt exactly."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "features": self.features,
                "norm": self.norm, "downsample": self.downsample}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, self.divisor)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :height, :width]


def build_unet2d(plan: Mapping, view: str, features: Sequence[int] | None = None, **kwargs) -> UNet2D:
    """The U-Net of one view as planned (``plan["views"][view]``).

    Args:
        plan: plans.json as a dict or :class:`vfnet.experiment_planning.plans.Plan`.
        view: axial, coronal or sagittal.
        features: override the planned widths (tests and benchmarks); depth follows its length.
        **kwargs: ``norm`` / ``downsample`` of :class:`UNet2D`.
    """
    spec = plan["views"][check_view(view)]
    widths = list(features) if features is not None else list(spec["features"])
    if features is None and len(widths) != spec["num_poolings"] + 1:
        raise ValueError(f"plan of view {view}: {len(widths)} feature widths do not match "
                         f"{spec['num_poolings']} poolings")
    return UNet2D(spec["in_channels"], int(plan["num_classes"]), widths, **kwargs)


def unet2d_from_config(config: Mapping) -> UNet2D:
    """Rebuild a network from :meth:`UNet2D.config`."""
    return UNet2D(**dict(config))
