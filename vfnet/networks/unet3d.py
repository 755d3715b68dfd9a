"""The 3D U-Net baseline in nnU-Net's default shape, planned from the same fingerprint as the VFN.

Per stage two 3×3×3 conv + instance norm + LeakyReLU; down-sampling by a stride-2 first
conv, up-sampling by a 2×2×2 stride-2 transposed conv, skip connections concatenated;
32 features doubling per stage, capped at 320 (``plan["unet3d"]["features"]``). It is the
reference for "VFN ≈ 10% of a 3D network's parameters" and for the 2D-versus-3D table.

Example:
    >>> net = build_unet3d(plan, in_channels=1, num_classes=3)
    >>> net(torch.zeros(1, 1, 40, 56, 40)).shape
    torch.Size([1, 3, 40, 56, 40])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfnet.networks.conv import Conv3d, InstanceNorm3d


def _conv_norm_act(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
                         InstanceNorm3d(out_channels, eps=1e-5, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_conv_norm_act(in_channels, out_channels, stride), _conv_norm_act(out_channels, out_channels))


class UNet3D(nn.Module):
    """nnU-Net-shaped 3D U-Net (no deep supervision); input sizes are padded to a multiple of 2^depth inside.

    Args:
        in_channels: image channels.
        num_classes: background + foreground classes (softmax logits).
        features: width of each resolution stage, the first at full resolution.
    """

    def __init__(self, in_channels: int, num_classes: int, features: Sequence[int]):
        super().__init__()
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ValueError(f"a 3D U-Net needs at least two stages, got features {features}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.features = features
        self.divisor = 2 ** (len(features) - 1)
        self.encoder = nn.ModuleList(
            _stage(in_channels if k == 0 else features[k - 1], features[k], 1 if k == 0 else 2)
            for k in range(len(features)))
        decoder_scales = range(len(features) - 2, -1, -1)
        self.upsample = nn.ModuleList(nn.ConvTranspose3d(features[k + 1], features[k], 2, stride=2)
                                      for k in decoder_scales)
        self.decoder = nn.ModuleList(_stage(2 * features[k], features[k], 1) for k in decoder_scales)
        self.head = Conv3d(features[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, z, y, x) → logits (N, num_classes, z, y, x)."""
        shape = x.shape[2:]
        pad = [(-s) % self.divisor for s in shape]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for upsample, stage, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = stage(torch.cat([upsample(x), skip], dim=1))
        x = self.head(x)
        return x[:, :, :shape[0], :shape[1], :shape[2]]


def build_unet3d(plan, in_channels: int, num_classes: int) -> UNet3D:
    """The 3D U-Net baseline of a plan (``plan["unet3d"]["features"]``).

    Args:
        plan: a :class:`vfnet.experiment_planning.plans.Plan` or the plans.json dict.
        in_channels: image channels.
        num_classes: background + foreground classes.
    """
    return UNet3D(in_channels, num_classes, plan["unet3d"]["features"])


def unet3d_config(network: UNet3D) -> dict:
    """Constructor arguments of a 3D U-Net, stored in checkpoints so it can be rebuilt exactly."""
    return {"in_channels": network.in_channels, "num_classes": network.num_classes, "features": network.features}
