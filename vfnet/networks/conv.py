"""A 3D convolution that takes oneDNN's fast path for one-sample CPU batches at prediction.

PyTorch's CPU convolution picks its reference implementation (``slow_conv3d``) for a one-sample
batch whose first four dimensions hold at most 20,480 values (few channels, small windows),
and oneDNN for anything larger or batched. At prediction a lone window (every Hippocampus
volume is one VFN window) then ran 2.7× slower than oneDNN computes the same numbers: a VFN
window of 40×56×40 took 0.049 s through oneDNN against 0.133 s for the pair vfnet sent
instead, with identical outputs (measured on 2 cores while developing; the sliding window no
longer sends a lone window twice).

Training and anything with gradients keep PyTorch's own choice.
"""

from __future__ import annotations

import torch
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
