"""The Volumetric Fusion Net and the 3D U-Net baseline: shapes, the averaging remark, parameter counts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import synthetic_plan

from vfnet.experiment_planning.plans import plan_unet3d, plan_vfn
from vfnet.fusion.methods import majority_vote, mean_fusion, vfn_input
from vfnet.networks.unet3d import build_unet3d
from vfnet.networks.vfn import (
    VolumetricFusionNet,
    build_vfn,
    count_parameters,
    init_as_view_average,
    state_view_prior,
    state_view_symmetric,
    vfn_in_channels,
    vfn_probabilities,
)
from vfnet.views import VIEWS

torch.set_num_threads(1)
ODD_SHAPE = (19, 23, 17)


def hippocampus_plan() -> dict:
    """A plan shaped like MSD Hippocampus: median shape 36×50×35, organ box about 25×35×20."""
    return {"vfn": plan_vfn((36, 50, 35), (25, 35, 20)), "unet3d": plan_unet3d((36, 50, 35))}


def binarized_views(rng: np.random.Generator, num_classes: int, shape=ODD_SHAPE) -> dict[str, np.ndarray]:
    """One-hot maps of random labels per view, correlated so that views often agree."""
    base = rng.integers(0, num_classes, shape)
    maps = {}
    for view in VIEWS:
        labels = np.where(rng.random(shape) < 0.3, rng.integers(0, num_classes, shape), base)
        maps[view] = np.eye(num_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
    return maps


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("use_image", [True, False])
def test_vfn_output_shape_equals_odd_input_shape(num_classes, use_image):
    net = build_vfn(hippocampus_plan(), num_image_channels=1, num_classes=num_classes, use_image=use_image)
    assert net.in_channels == (1 if use_image else 0) + 3 * (num_classes - 1)
    x = torch.rand(2, net.in_channels, *ODD_SHAPE)
    logits = net(x)
    assert logits.shape == (2, 1 if num_classes == 2 else num_classes, *ODD_SHAPE)
    probs = vfn_probabilities(logits)
    assert probs.shape == (2, num_classes, *ODD_SHAPE)
    assert torch.allclose(probs.sum(1), torch.ones(2, *ODD_SHAPE), atol=1e-5)
    assert vfn_probabilities(logits[0]).shape == (num_classes, *ODD_SHAPE)


def test_vfn_rejects_wrong_channel_count():
    net = build_vfn(hippocampus_plan(), 1, 2)
    with pytest.raises(ValueError, match="4 input channels"):
        net(torch.rand(1, 3, 8, 8, 8))


def test_view_channels_match_vfn_input_layout():
    rng = np.random.default_rng(0)
    num_classes = 3
    net = build_vfn(hippocampus_plan(), num_image_channels=2, num_classes=num_classes)
    probs = {view: rng.random((num_classes, 5, 6, 7)).astype(np.float32) for view in VIEWS}
    x = vfn_input(rng.random((2, 5, 6, 7)), probs, use_image=True)
    assert x.shape[0] == net.in_channels == vfn_in_channels(2, num_classes)
    for index, view in enumerate(VIEWS):
        np.testing.assert_array_equal(x[net.view_channels(index)], probs[view][1:])


@pytest.mark.parametrize("num_classes", [2, 3])
def test_view_average_weights_reproduce_majority_vote(num_classes):
    # The paper: with equal weights the VFN is about majority voting; on binarized maps it is exactly so.
    rng = np.random.default_rng(num_classes)
    maps = binarized_views(rng, num_classes)
    image = rng.random((1, *ODD_SHAPE)).astype(np.float32)
    net = init_as_view_average(build_vfn(hippocampus_plan(), 1, num_classes))
    with torch.no_grad():
        probs = vfn_probabilities(net(torch.from_numpy(vfn_input(image, maps))[None]))[0].numpy()
    fused = probs.argmax(0)
    majority = majority_vote(maps)
    votes = np.stack([m.argmax(0) for m in maps.values()])
    # Where all three views disagree both fall back to a three-way tie of the mean; skip those.
    some_agree = (votes[0] == votes[1]) | (votes[0] == votes[2]) | (votes[1] == votes[2])
    assert some_agree.mean() > 0.9
    np.testing.assert_array_equal(fused[some_agree], majority[some_agree])
    if num_classes == 2:
        np.testing.assert_array_equal(fused, majority)
        mean_fg = np.mean([m[1] for m in maps.values()], axis=0)
        np.testing.assert_allclose(probs[1] > 0.5, mean_fg > 0.5)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_untrained_vfn_with_view_prior_is_mean_fusion(num_classes):
    rng = np.random.default_rng(10 + num_classes)
    raw = {view: rng.random((num_classes, *ODD_SHAPE)).astype(np.float32) + 0.05 for view in VIEWS}
    maps = {view: m / m.sum(0, keepdims=True) for view, m in raw.items()}
    net = build_vfn(hippocampus_plan(), 1, num_classes)
    assert net.view_prior and hippocampus_plan()["vfn"]["view_prior"]
    x = torch.from_numpy(vfn_input(rng.random((1, *ODD_SHAPE)), maps))[None]
    for mode in (True, False):  # BN statistics must not matter: the head starts at zero
        net.train(mode)
        with torch.no_grad():
            probs = vfn_probabilities(net(x))[0].numpy()
        np.testing.assert_allclose(probs, np.mean(list(maps.values()), axis=0), atol=2e-4)
    # training moves it away from the mean: the head is a learnable correction, not frozen
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(3):
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
    assert net.head.weight.abs().sum() > 0


def test_checkpoint_says_whether_it_has_the_view_prior():
    plan = hippocampus_plan()
    paper = build_vfn(plan, 1, 3, view_prior=False)
    prior = build_vfn(plan, 1, 3)
    assert not state_view_prior(paper.state_dict())
    assert state_view_prior(prior.state_dict())
    with pytest.raises(RuntimeError, match="view_prior"):
        paper.load_state_dict(prior.state_dict())
    x = torch.rand(1, paper.in_channels, *ODD_SHAPE)
    paper.eval(), prior.eval()
    prior.load_state_dict(paper.state_dict(), strict=False)
    with torch.no_grad():  # same weights, the prior shifts the logits
        assert not torch.allclose(paper(x), prior(x))


@pytest.mark.parametrize("view_symmetric", [True, False])
@pytest.mark.parametrize("saved_with_prior", [True, False, "stack"])
def test_load_vfn_builds_the_network_its_checkpoint_holds(tmp_path, saved_with_prior, view_symmetric):
    # a VFN trained before the prior existed (or with "view_prior": false) still loads under a prior plan;
    # whether its network sorted the views (a marker buffer) comes from the checkpoint too, whatever the plan says
    from vfnet.experiment_planning.plans import Plan
    from vfnet.fusion.models import load_vfn

    plan = Plan(synthetic_plan(num_classes=3, modality="MRI"))  # Hippocampus-like: the VFN of hippocampus_plan()
    assert plan["vfn"] == hippocampus_plan()["vfn"] and not plan.vfn.view_symmetric
    torch.manual_seed(1)
    saved = build_vfn(plan, 1, 3, view_prior=saved_with_prior, view_symmetric=view_symmetric)
    torch.nn.init.normal_(saved.head.weight, std=0.5)  # a trained head: the layers before it count
    if saved_with_prior == "stack":
        saved.set_stack_prior({"weight": torch.randn(3, 9).tolist(), "bias": [0.5, -0.2, 0.1]})
    assert state_view_symmetric(saved.state_dict()) == view_symmetric
    torch.save({"network": saved.state_dict()}, tmp_path / "checkpoint_final.pth")
    loaded = load_vfn(tmp_path, plan)
    assert loaded.prior_kind == {True: "mean", False: None, "stack": "stack"}[saved_with_prior]
    assert loaded.view_symmetric == view_symmetric
    x = torch.rand(1, saved.in_channels, *ODD_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), saved.eval()(x))


def _swap_views(x: torch.Tensor, net: VolumetricFusionNet, first: int, second: int) -> torch.Tensor:
    """The input with views ``first`` and ``second``'s maps exchanged."""
    swapped = x.clone()
    swapped[:, net.view_slice(first)], swapped[:, net.view_slice(second)] = x[:, net.view_slice(second)], \
        x[:, net.view_slice(first)]
    return swapped


@pytest.mark.parametrize("num_classes", [2, 4])
def test_a_view_symmetric_vfn_corrects_alike_whichever_view_holds_which_map(num_classes):
    """Sorted per class and voxel, the views' maps reach the layers without their names: exchanging two
    views' maps leaves the correction (and, with the mean prior, the output) unchanged; the same
    weights reading the views by name change it."""
    torch.manual_seed(3)
    by_view = VolumetricFusionNet(1, num_classes, True, [4, 8, 8, 16], view_prior="mean").eval()
    torch.nn.init.normal_(by_view.head.weight, std=0.5)
    symmetric = VolumetricFusionNet(1, num_classes, True, [4, 8, 8, 16], view_prior="mean", view_symmetric=True)
    symmetric.load_state_dict(by_view.state_dict(), strict=False)
    symmetric.eval()
    x = torch.rand(2, symmetric.in_channels, *ODD_SHAPE)
    with torch.no_grad():
        for first, second in ((0, 1), (0, 2), (1, 2)):
            swapped = _swap_views(x, symmetric, first, second)
            torch.testing.assert_close(symmetric.correction(swapped), symmetric.correction(x))
            # the mean prior adds the views in another order: equal up to float rounding
            torch.testing.assert_close(symmetric(swapped), symmetric(x), rtol=1e-4, atol=1e-4)
            assert (by_view.correction(swapped) - by_view.correction(x)).abs().max() > 1e-3


def test_sorted_views_hold_each_class_lowest_middle_and_highest_probability():
    net = VolumetricFusionNet(2, 3, True, [4, 8, 8, 16], view_symmetric=True)
    x = torch.rand(1, net.in_channels, 3, 4, 5)
    ordered = net.sorted_views(x)
    torch.testing.assert_close(ordered[:, :2], x[:, :2])  # the image channels as they were
    views = torch.stack([x[:, net.view_slice(v)] for v in range(len(VIEWS))], dim=1)  # (N, 3, C, z, y, x)
    expected = [views.min(dim=1).values, views.median(dim=1).values, views.max(dim=1).values]
    for rank, values in enumerate(expected):
        torch.testing.assert_close(ordered[:, net.view_slice(rank)], values)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_folding_batch_norm_keeps_the_eval_output(num_classes):
    torch.manual_seed(0)
    net = build_vfn({"vfn": {"features": [4, 8, 8, 16], "view_prior": True}}, 1, num_classes)
    for module in net.modules():  # BatchNorms with statistics and affine terms far from the identity
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.normal_(1, 0.3)
            module.bias.data.normal_(0, 0.3)
    torch.nn.init.normal_(net.head.weight, std=0.3)
    x = torch.rand(2, net.in_channels, *ODD_SHAPE)
    with torch.no_grad():
        expected = net.eval()(x)
        folded = net.fold_batch_norm()
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
        assert not folded.training
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)


def test_the_vfn_runs_channels_last_on_cpu_and_the_unets_do_not():
    from vfnet.device import memory_format
    from vfnet.networks.unet2d import UNet2D

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    vfn = build_vfn({"vfn": {"features": [4, 8, 8, 16], "view_prior": True}}, 1, 3)
    unet3d = build_unet3d(hippocampus_plan(), 1, 3)
    assert memory_format(vfn, cpu) == torch.channels_last_3d
    assert memory_format(unet3d, cpu) is None
    assert memory_format(unet3d, cuda) == torch.channels_last_3d
    assert memory_format(UNet2D(1, 3, [4, 8]), cuda) is None  # 2D: no 3D layout


def test_mean_of_binarized_maps_equals_majority_for_one_organ():
    maps = binarized_views(np.random.default_rng(5), 2)
    np.testing.assert_array_equal(mean_fusion(maps), majority_vote(maps))


def test_unet3d_output_shape_and_plan_widths():
    plan = hippocampus_plan()
    net = build_unet3d(plan, in_channels=1, num_classes=3)
    assert net.features == [32, 64, 128, 256]
    assert net(torch.rand(1, 1, *ODD_SHAPE)).shape == (1, 3, *ODD_SHAPE)


def test_vfn_has_fewer_parameters_than_planned_unet3d():
    plan = hippocampus_plan()
    vfn = count_parameters(build_vfn(plan, num_image_channels=1, num_classes=3))
    unet = count_parameters(build_unet3d(plan, in_channels=1, num_classes=3))
    print(f"\nHippocampus-like plan: VFN {vfn:,} parameters, 3D U-Net {unet:,} ({100 * vfn / unet:.1f}%)")
    # the paper: the VFN has about 10% of a 3D network's parameters (measured 5.1% of the planned U-Net)
    assert 0.02 * unet < vfn < 0.15 * unet


def test_networks_do_not_import_simpleitk():
    code = ("import sys, vfnet.networks.vfn, vfnet.networks.unet3d, vfnet.fusion.methods, vfnet.fusion.roi; "
            "sys.exit('SimpleITK' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_forward_is_the_correction_plus_the_prior():
    from vfnet.networks.vfn import PriorCorrection

    torch.manual_seed(0)
    for prior in ("mean", False):
        net = VolumetricFusionNet(1, 3, features=(4, 8, 8, 8), view_prior=prior).eval()
        torch.nn.init.normal_(net.head.weight, std=0.5)
        x = torch.rand(1, net.in_channels, 9, 10, 11)
        with torch.no_grad():
            expected = net.correction(x) + (net.prior_logits(x) if prior else 0)
            torch.testing.assert_close(net(x), expected)
            torch.testing.assert_close(PriorCorrection(net)(x), net.correction(x))


def _blob_maps(shape=(8, 32, 32)):
    """Three views' probability maps of two organs with soft edges, and an image."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    first = 1 / (1 + np.exp(-(6 - np.hypot(y - 12, x - 11)) * 1.5)) * (np.abs(z - 4) < 3)
    second = 1 / (1 + np.exp(-(5 - np.hypot(y - 22, x - 23)) * 1.5)) * (np.abs(z - 4) < 3)
    maps = {}
    for k, view in enumerate(VIEWS):
        fg = np.stack([first, second]) * (0.9 + 0.03 * k)
        maps[view] = np.concatenate([1 - fg.sum(0, keepdims=True), fg]).astype(np.float32)
    return maps, rng.normal(size=(1, *shape)).astype(np.float32)


def test_a_coarse_prior_vfn_corrects_the_full_resolution_prior():
    """A VFN that fuses at a coarser in-plane resolution adds its correction, upsampled, to the prior of the
    full-resolution maps: untrained (zero correction) it is exactly mean fusion at full resolution, where
    upsampling its coarse probabilities would blur the organs' edges."""
    from vfnet.fusion.methods import VfnConfig, fused_probabilities, vfn_input
    from vfnet.networks.vfn import PriorCorrection
    from vfnet.resolution import downsample_image, upsample_probabilities
    from vfnet.windows import pad_to_size

    maps, image = _blob_maps()
    config = VfnConfig([8, 8, 8], [8, 8, 8], [0, 0, 0])
    net = VolumetricFusionNet(1, 3, features=(4, 8, 8, 8), view_prior="mean").eval()
    net.input_downsample = (1, 4, 4)
    mean = fused_probabilities("mean", maps)
    untrained = fused_probabilities("vfn", maps, image, model=net, vfn_config=config)
    np.testing.assert_allclose(untrained, mean, atol=1e-3)  # the prior clamps at 1e-4
    # the old way, the coarse map upsampled, moves the edges: the test would fail on it
    coarse, _ = pad_to_size(downsample_image(vfn_input(image, maps), (1, 4, 4)), [8, 8, 8])
    with torch.no_grad():
        blurred = torch.softmax(net(torch.from_numpy(coarse)[None]), 1)[0].numpy()
    assert np.abs(upsample_probabilities(blurred, (8, 32, 32)) - mean).max() > 0.1
    # a trained correction is applied at the coarse grid and interpolated
    torch.manual_seed(1)
    torch.nn.init.normal_(net.head.weight, std=0.5)
    torch.nn.init.normal_(net.head.bias, std=0.5)
    fused = fused_probabilities("vfn", maps, image, model=net, vfn_config=config)
    with torch.no_grad():
        correction = PriorCorrection(net)(torch.from_numpy(coarse)[None])[0].numpy()
        prior = net.prior_logits(torch.from_numpy(vfn_input(image, maps))[None])[0]
        expected = torch.softmax(prior + torch.from_numpy(upsample_probabilities(correction, (8, 32, 32))), 0)
    np.testing.assert_allclose(fused, expected.numpy(), atol=1e-4)
    assert np.abs(fused - mean).max() > 0.05
    assert not net.training  # the prediction left the VFN in eval mode
