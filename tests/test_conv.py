"""vfnet.networks.conv.Conv3d: oneDNN for one-sample CPU batches at prediction, the same numbers as nn.Conv3d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfnet.networks.conv import Conv3d, InstanceNorm2d, InstanceNorm3d
from vfnet.networks.unet3d import UNet3D
from vfnet.networks.vfn import VolumetricFusionNet

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _ops(fn) -> set[str]:
    with torch.autograd.profiler.profile() as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("stride, bias, layout", [(1, False, torch.channels_last_3d), (2, True, torch.contiguous_format)])
def test_one_sample_matches_nn_conv3d(stride, bias, layout):
    torch.manual_seed(0)
    fast = Conv3d(5, 8, 3, stride=stride, padding=1, bias=bias)
    plain = nn.Conv3d(5, 8, 3, stride=stride, padding=1, bias=bias)
    plain.load_state_dict(fast.state_dict())  # the same state dict
    x = torch.rand(1, 5, 9, 12, 10).contiguous(memory_format=layout)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_one_sample_without_gradients_takes_onednn_not_the_slow_path():
    fast = Conv3d(4, 8, 3, padding=1, bias=False)
    x = torch.rand(1, 4, 8, 10, 12)  # 1·4·8·10 = 320 values: PyTorch alone picks slow_conv3d
    with torch.no_grad():
        ops = _ops(lambda: fast(x))
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops
    with torch.no_grad():
        assert "aten::slow_conv3d_forward" in _ops(lambda: nn.Conv3d(4, 8, 3, padding=1, bias=False)(x))


def test_gradients_keep_pytorchs_path():
    fast = Conv3d(2, 3, 3, padding=1)
    x = torch.rand(1, 2, 6, 6, 6, requires_grad=True)
    fast(x).sum().backward()
    assert x.grad is not None and fast.weight.grad is not None and float(fast.weight.grad.abs().sum()) > 0


def test_lone_window_equals_its_place_in_a_batch():
    """A VFN (BatchNorms folded, channels last) and a 3D U-Net give a lone window the output it gets in a pair."""
    torch.manual_seed(1)
    vfn = VolumetricFusionNet(1, 3, view_prior="mean").eval().fold_batch_norm().to(memory_format=torch.channels_last_3d)
    unet = UNet3D(1, 3, [8, 16, 32]).eval()
    for model, layout in ((vfn, torch.channels_last_3d), (unet, torch.contiguous_format)):
        x = torch.rand(2, model.in_channels, 16, 24, 16).contiguous(memory_format=layout)
        with torch.inference_mode():
            torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fast_cls, plain_cls, shape", [(InstanceNorm2d, nn.InstanceNorm2d, (3, 6, 9, 7)),
                                                        (InstanceNorm3d, nn.InstanceNorm3d, (2, 6, 5, 9, 7))])
def test_instance_norm_as_group_norm_matches_pytorch(fast_cls, plain_cls, shape):
    torch.manual_seed(0)
    fast, plain = fast_cls(6, affine=True), plain_cls(6, affine=True)
    with torch.no_grad():
        fast.weight.uniform_(0.5, 2.0)
        fast.bias.uniform_(-1.0, 1.0)
    plain.load_state_dict(fast.state_dict())  # the same state dict
    x = torch.randn(shape) * 3 + 1
    with torch.no_grad():
        ops = _ops(lambda: fast(x))
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    assert "aten::group_norm" in ops and "aten::instance_norm" not in ops
    # with gradients (training) PyTorch's own instance norm runs and gives the same gradients
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(shape)
    assert "aten::instance_norm" in _ops(lambda: fast(xa).backward(grad))
    plain(xb).backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)


def test_unbatched_instance_norm_keeps_pytorchs_path():
    norm = InstanceNorm2d(4, affine=True)
    x = torch.randn(4, 5, 6)  # (C, H, W) without a batch axis
    with torch.no_grad():
        torch.testing.assert_close(norm(x), nn.InstanceNorm2d(4, affine=True)(x))
