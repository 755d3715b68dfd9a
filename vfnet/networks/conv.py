"""CPU fast paths at prediction: a 3D convolution for one-sample batches, instance norms as group norms.

**Convolution.**

PyTorch's CPU convolution picks its reference implementation (``slow_conv3d``) for a one-sample
batch whose first four dimensions hold at most 20,480 values (few channels, small windows),
and oneDNN for anything larger or batched. At prediction a lone window (every Hippocampus
volume is one VFN window) then ran 2.7× slower than oneDNN computes the same numbers: a VFN
window of 40×56×40 took 0.049 s through oneDNN against 0.133 s for the pair vfnet sent
instead, with identical outputs (measured on 2 cores while developing; the sliding window no
longer sends a lone window twice).

**Instance norm.** On CPU ``F.instance_norm`` reshapes its input into one batch-norm problem
of N·C channels, and that is slower than ``F.group_norm`` with one group per channel, which
computes exactly the same statistics (an instance norm without running statistics is a group
norm with C groups). Without gradients the group norm took 1.5-7× less time on 2 cores (a
batch of 36 Hippocampus slices of 32 × 56 × 40: 0.8 ms against 5.7 ms; a CHAOST2 volume of
32 × 36 × 256 × 256: 154 ms against 279 ms), and 20 Hippocampus cases predicted with one
thread in 21.7 s against 25.2 s (measured while developing). With gradients the two are
close and the group norm was slower on large batches with 2 threads, so training keeps
``F.instance_norm``; CUDA keeps it too (not measured there).

Training and anything with gradients keep PyTorch's own choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _one_dnn_applies(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    return (x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state dict) whose one-sample CPU batches without
    gradients run through oneDNN (``torch.mkldnn_convolution``) instead of ``slow_conv3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _one_dnn_applies(x, self):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


def _group_norm_applies(x: torch.Tensor, norm: nn.Module) -> bool:
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and not norm.track_running_stats
            and x.dim() == norm.batched_dims)


class _GroupNormWhenPredicting:
    """Mixin for ``nn.InstanceNorm{2,3}d``: batched CPU inputs without gradients go through
    ``F.group_norm`` with one group per channel (the same numbers, faster; see the module's doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _group_norm_applies(x, self):
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


class InstanceNorm2d(_GroupNormWhenPredicting, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same state dict) computed as a group norm on CPU without gradients."""

    batched_dims = 4


class InstanceNorm3d(_GroupNormWhenPredicting, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same state dict) computed as a group norm on CPU without gradients."""

    batched_dims = 5
