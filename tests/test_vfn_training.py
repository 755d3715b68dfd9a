"""The VFN learns what majority voting cannot: where two views miss part of the organ."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from vfnet.experiment_planning.settings import SGD_PAPER
from vfnet.fusion.methods import VfnConfig, fuse, vfn_input
from vfnet.measures.metrics import dice
from vfnet.networks.vfn import VolumetricFusionNet
from vfnet.training.config import StepLR, sgd
from vfnet.training.data_vfn import VfnPatchSampler
from vfnet.training.losses import SoftDiceLoss
from vfnet.training.trainer import Trainer, TrainingConfig

SHAPE = (20, 20, 20)


def _case(rng):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij"))
    centre = np.array(SHAPE) / 2 + rng.uniform(-2, 2, 3)
    radii = rng.uniform(4.5, 6.5, 3)
    organ = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    image = (organ * 1.0 + rng.normal(0, 0.25, SHAPE))[None].astype(np.float32)
    missed = organ & (grid[0] > centre[0])  # the upper half of the organ
    maps = {}
    for view in ("axial", "coronal", "sagittal"):
        found = organ & ~missed if view != "axial" else organ
        soft = np.clip(found * 0.9 + rng.uniform(0, 0.1, SHAPE), 0, 1).astype(np.float32)
        maps[view] = np.stack([1 - soft, soft])
    return image, maps, organ.astype(np.uint8)


def test_short_vfn_training_recovers_what_two_views_missed():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = [_case(rng) for _ in range(6)]
    samples = [(vfn_input(image, maps).astype(np.float16), label) for image, maps, label in train]
    sampler = VfnPatchSampler(samples, [16, 16, 16], [1, 1, 1], num_image_channels=1, num_foreground=1,
                              batch_size=2, seed=0)
    model = VolumetricFusionNet(1, 2, True, [4, 8, 16, 32])
    paper_sgd = partial(sgd, momentum=SGD_PAPER["momentum"], nesterov=False, weight_decay=SGD_PAPER["weight_decay"])
    config = TrainingConfig(iterations=60, lr=0.05, val_every=60, lr_schedule=StepLR(60),
                            optimizer=paper_sgd, grad_clip=None)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        Trainer(model, SoftDiceLoss(), sampler, None, config, out, device="cpu", quiet=True).fit()
    test_rng = np.random.default_rng(99)
    gains = []
    for _ in range(3):
        image, maps, label = _case(test_rng)
        majority = fuse("majority", maps)
        fused = fuse("vfn", maps, image, model=model, vfn_config=VfnConfig([16, 16, 16], [8, 8, 8], [4, 4, 4]))
        gains.append(dice(label > 0, fused > 0) - dice(label > 0, majority > 0))
        assert dice(label > 0, majority > 0) < 0.8  # majority really misses the upper half
    print("Dice gains of VFN over majority:", gains)
    assert np.mean(gains) > 0.05, gains


def test_vfn_training_alone_needs_its_fusion_set_and_names_the_command(demo_preprocessed):
    # training never builds fusion sets (fusion is a later stage); vfnet.pipeline.units.train_vfn_unit does
    import pytest

    from vfnet.errors import ModelNotFoundError
    from vfnet.training.train_vfn import fit_vfn_unit

    with pytest.raises(ModelNotFoundError, match="vfnet_build_fusion_set"):
        fit_vfn_unit(None, "0", "default", device="cpu", quiet=True)
