"""Calibration for budgeted schedules: seconds per training step, batch and predicted slice on this device.

Each view's 2D U-Net is timed at the candidate resolutions (the planned one and, for large
axes, in-plane downsampling by 2 and 4), and the VFN at its patch; :mod:`vfnet.training.budget`
allocates iterations from these numbers.

Example:
    >>> calibration = calibrate(plan, torch.device("cpu"))
    >>> calibration["views"]["axial"][0]["step_s"]   # finest candidate first
    0.21
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from vfnet.device import memory_format
from vfnet.experiment_planning.plans import Plan, plan_2d_view
from vfnet.resolution import downsampled_shape
from vfnet.views import VIEWS, view_shape

BATCH = {"2d": 8, "vfn": 2}
# CPU-sized 2D U-Nets: half nnU-Net's widths. On CHAOST2 (axial, fold 0, about 70 s of training on 2
# cores, 1/4 resolution) base 16 reached Dice 0.867 where base 32 reached 0.838 (fewer steps).
BASE_FEATURES_2D, MAX_FEATURES_2D = 16, 256
DOWNSAMPLE_FACTORS = (1, 2, 4)
DOWNSAMPLE_MIN_EXTENT = 128  # only canonical axes longer than this (median voxels) are ever downsampled
LOADER_SHARE = 0.5  # share of a batch's sampling and augmentation time that adds to a training step
CALIBRATION_STEPS = 3


def _time_steps(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: allocator, lazy initialisation
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _in_layout(network: torch.nn.Module, data: torch.Tensor, device: torch.device):
    """Network and batch in the layout training and prediction use (:func:`vfnet.device.memory_format`)."""
    layout = memory_format(network, device)
    if layout is None:
        return network, data
    return network.to(memory_format=layout), data.contiguous(memory_format=layout)


def _train_step_seconds(network: torch.nn.Module, shape: Sequence[int], num_classes: int,
                        device: torch.device, repeats: int) -> float:
    from vfnet.training.losses import DiceCELoss

    network, data = _in_layout(network.to(device).train(), torch.randn(*shape, device=device), device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    loss = DiceCELoss()
    target = torch.randint(0, num_classes, (shape[0], 1, *shape[2:]), device=device).float()
    amp = device.type == "cuda"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            value = loss(network(data), target)
        value.backward()
        optimizer.step()
        if amp:
            torch.cuda.synchronize()

    return _time_steps(step, repeats)


@torch.no_grad()
def _forward_seconds(network: torch.nn.Module, shape: Sequence[int], device: torch.device, repeats: int) -> float:
    network, data = _in_layout(network.to(device).eval(), torch.randn(*shape, device=device), device)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, enabled=amp):
            network(data)
        if amp:
            torch.cuda.synchronize()

    return _time_steps(step, repeats)


def _batch_seconds(setting: dict, num_channels: int, context: int, mirror_axes: Sequence[int], repeats: int) -> float:
    """Seconds to sample and augment one training batch of a view setting (synthetic volume, in-process)."""
    from vfnet.training.data2d import SliceSampler, ViewVolume, augmentation_2d

    rng = np.random.default_rng(0)
    slices, (height, width) = setting["slices_per_case"], setting["slice_shape"]
    label = np.zeros((slices, height, width), np.uint8)
    label[:, height // 4:3 * height // 4, width // 4:3 * width // 4] = 1
    volume = ViewVolume("calibration", rng.normal(size=(num_channels, slices, height, width)).astype(np.float32),
                        label, {1: np.argwhere(label == 1)[:2000].astype(np.int32)})
    sampler = SliceSampler([volume], setting["patch_size"], context, BATCH["2d"])
    transform = augmentation_2d(setting["patch_size"], mirror_axes)
    return _time_steps(lambda: transform(**sampler.generate_train_batch()), repeats)


def candidate_factors(median_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """In-plane downsampling factors worth trying: only axes longer than :data:`DOWNSAMPLE_MIN_EXTENT`."""
    large = [s > DOWNSAMPLE_MIN_EXTENT for s in median_shape]
    if not any(large):
        return [(1, 1, 1)]
    return [tuple(f if big else 1 for big in large) for f in DOWNSAMPLE_FACTORS
            if min(s // f for s, big in zip(median_shape, large) if big) >= 32]


def view_setting(plan: Plan, view: str, factor: Sequence[int]) -> dict:
    """Patch, depth and widths of ``view``'s U-Net on volumes downsampled by ``factor``."""
    shape = downsampled_shape(plan["median_shape"], factor)
    spec = plan_2d_view(tuple(shape), view, plan.num_channels)
    features = [min(BASE_FEATURES_2D * 2**i, MAX_FEATURES_2D) for i in range(spec["num_poolings"] + 1)]
    return {"input_downsample": [int(f) for f in factor], "patch_size": spec["patch_size"],
            "num_poolings": spec["num_poolings"], "features": features,
            "slices_per_case": int(view_shape(shape, view)[0]), "slice_shape": list(view_shape(shape, view)[1:])}


def calibrate(plan: Plan, device: torch.device, max_step_s: float = float("inf"), repeats: int = CALIBRATION_STEPS,
              quiet: bool = True) -> dict:
    """Seconds per training step and per predicted slice of each view at candidate resolutions, and of the VFN.

    Each view is measured from its coarsest candidate towards the planned resolution and stops
    at the first one slower than ``max_step_s`` (finer ones would only be slower still), so
    calibration takes seconds even where full-resolution steps take many.
    """
    from vfnet.networks.unet2d import UNet2D
    from vfnet.networks.vfn import build_vfn

    start = time.perf_counter()
    torch.manual_seed(0)
    views = {}
    for view in VIEWS:
        settings = []
        spec = plan.view(view)
        channels = spec.in_channels
        for factor in reversed(candidate_factors(plan["median_shape"])):
            setting = view_setting(plan, view, factor)
            network = UNet2D(channels, plan.num_classes, setting["features"])
            network_s = _train_step_seconds(network, (BATCH["2d"], channels, *setting["patch_size"]),
                                            plan.num_classes, device, repeats)
            setting["batch_s"] = _batch_seconds(setting, plan.num_channels, spec.context_slices, spec.mirror_axes,
                                                repeats)
            # the loader's worker shares the cores with the network: half its time adds to a step
            setting["step_s"] = network_s + LOADER_SHARE * setting["batch_s"]
            setting["slice_s"] = _forward_seconds(network, (BATCH["2d"], channels, *setting["slice_shape"]),
                                                  device, 1) / BATCH["2d"]
            settings.insert(0, setting)  # finest first
            if not quiet:
                print(f"  calibration {view} x{list(factor)}: {setting['step_s']:.3f} s/step "
                      f"({setting['batch_s']:.3f} s/batch to load), "
                      f"{1000 * setting['slice_s']:.1f} ms/slice", flush=True)
            if setting["step_s"] > max_step_s:
                break
        views[view] = settings
    vfn = build_vfn(plan, plan.num_channels, plan.num_classes)
    patch = plan.vfn.patch_size
    vfn_step = _train_step_seconds(vfn, (BATCH["vfn"], vfn.in_channels, *patch), plan.num_classes, device, repeats)
    vfn_window = _forward_seconds(vfn, (2, vfn.in_channels, *patch), device, 1) / 2
    return {"device": str(device), "threads": torch.get_num_threads(), "views": views,
            "vfn": {"step_s": vfn_step, "window_s": vfn_window},
            "seconds": time.perf_counter() - start}
