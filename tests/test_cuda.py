"""Mixed-precision training on CUDA: a tiny 2D unit per view and the VFN (skipped without a GPU).

benchmarks/gpu_check.sh runs these with ``-m cuda`` on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import demo_workspace

from vfnet.atomic import read_json
from vfnet.views import VIEWS

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY_2D = {"iterations": 20, "batch_size": 8, "num_workers": 0, "val_every": 10}
TINY_VFN = {"iterations": 10, "batch_size": 2, "val_every": 5}


@pytest.fixture(scope="module")
def holdout_on_cuda(tmp_path_factory):
    from vfnet.pipeline.units import train_2d_unit, train_vfn_unit

    _, _, monkey = demo_workspace(tmp_path_factory, "cuda", num_test=0, shape=(32, 48, 40))
    units = [train_2d_unit(None, view, "holdout", "default", device="cuda", quiet=True, schedule_overrides=TINY_2D,
                           features=[8, 16, 32]) for view in VIEWS]
    vfn = train_vfn_unit(None, "holdout", "default", device="cuda", quiet=True, schedule_overrides=TINY_VFN)
    yield units, vfn
    monkey.undo()


def _checks_mixed_precision(unit) -> None:
    log = (unit / "training.log").read_text()
    assert "training on cuda" in log and "mixed precision" in log
    state = torch.load(unit / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert state["scaler"], "GradScaler was not enabled"  # an enabled scaler saves its scale and growth tracker
    weights = [v for v in state["network"].values() if v.is_floating_point()]
    assert all(torch.isfinite(w).all() for w in weights)
    assert all(np.isfinite(h["train_loss"]) for h in state["history"] if h["iteration"] > 0)


def test_2d_units_train_with_mixed_precision_on_cuda(holdout_on_cuda):
    units, _ = holdout_on_cuda
    for unit in units:
        _checks_mixed_precision(unit)
        maps = sorted((unit / "predictions").glob("*.npz"))
        assert maps
        with np.load(maps[0]) as archive:
            assert np.isfinite(archive["probabilities"]).all()


def test_vfn_trains_with_mixed_precision_on_cuda(holdout_on_cuda):
    _, vfn = holdout_on_cuda
    _checks_mixed_precision(vfn)
    summary = read_json(vfn / "summary.json")
    assert summary["iterations"] == TINY_VFN["iterations"] and 0.0 <= summary["best_val_pseudo_dice"] <= 1.0


def test_autocast_runs_convolutions_in_half_precision():
    from torch import nn

    net = nn.Conv3d(2, 4, 3).cuda()
    with torch.autocast("cuda"):
        out = net(torch.randn(1, 2, 8, 8, 8, device="cuda"))
    assert out.dtype == torch.float16


def test_vfn_batches_cropped_on_the_gpu_equal_the_cpu_ones():
    from vfnet.training.data_vfn import VfnPatchSampler, samples_on_device

    rng = np.random.default_rng(0)
    samples = [(rng.random((7, 20, 24, 18)).astype(np.float16), rng.integers(0, 3, (20, 24, 18)).astype(np.uint8))
               for _ in range(3)]
    on_gpu = samples_on_device(samples, "cuda")
    assert on_gpu[0][0].is_cuda
    common = {"patch_size": [16, 16, 16], "spacing": [1, 1, 1], "num_image_channels": 1, "num_foreground": 2,
                  "batch_size": 4, "seed": 2}
    expected, got = next(VfnPatchSampler(samples, **common)), next(VfnPatchSampler(on_gpu, **common))
    assert got["data"].is_cuda
    np.testing.assert_array_equal(got["data"].cpu().numpy(), expected["data"])
    np.testing.assert_array_equal(got["target"].cpu().numpy(), expected["target"])


def test_vfn_unit_crops_on_the_gpu(holdout_on_cuda):
    _, vfn = holdout_on_cuda
    assert "training patches cropped on cuda" in (vfn / "training.log").read_text()
