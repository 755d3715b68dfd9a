"""Resampling of anisotropic data: nnU-Net's separate coarse axis against one joint cubic zoom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vfnet.errors import VfnetError
from vfnet.experiment_planning.plans import RESAMPLING
from vfnet.prediction.predict import labels_to_input_geometry
from vfnet.preprocessing.preprocessing import (
    JOINT_RESAMPLING,
    coarse_axis,
    plan_resampling,
    preprocess_image,
    resample,
    resample_to_shape,
)

SEPARATE = {"scheme": "separate_coarse_axis", "anisotropy_threshold": 3.0}


def test_coarse_axis_follows_nnunets_rule():
    assert coarse_axis((7.7, 1.25, 1.25), (5.0, 1.25, 1.25), SEPARATE) == 0
    assert coarse_axis((1.0, 4.0, 1.0), (1.0, 1.0, 1.0), SEPARATE) == 1  # the source's coarse axis
    assert coarse_axis((1.0, 1.0, 1.0), (1.0, 1.0, 5.0), SEPARATE) == 2  # else the target's
    assert coarse_axis((2.0, 0.98, 0.98), (1.0, 1.0, 1.0), SEPARATE) is None  # ratio 2: isotropic enough
    assert coarse_axis((5.0, 5.0, 1.0), (1.0, 1.0, 1.0), SEPARATE) is None  # two axes tie for coarsest
    assert coarse_axis((7.7, 1.25, 1.25), (5.0, 1.25, 1.25), JOINT_RESAMPLING) is None
    assert coarse_axis((7.7, 1.25, 1.25), (5.0, 1.25, 1.25), None) is None


def _slices(depth: int = 6, size: int = 12) -> np.ndarray:
    """A volume whose slices differ by far more than their in-plane variation."""
    rng = np.random.default_rng(0)
    return np.stack([100.0 * z + rng.normal(size=(size, size)) for z in range(depth)]).astype(np.float32)


def test_separate_axis_copies_slices_and_interpolates_in_plane():
    volume = _slices()
    out = resample_to_shape(volume, (9, 18, 18), order=3, coarse=0)
    assert out.shape == (9, 18, 18)
    in_plane = ndimage.zoom(volume, (1.0, 1.5, 1.5), order=3, mode="nearest", grid_mode=True)
    for z in range(9):
        # every output slice is one input slice, zoomed in-plane: nothing is blended across slices
        errors = [np.abs(out[z] - in_plane[k]).max() for k in range(6)]
        assert min(errors) < 1e-3
    joint = resample_to_shape(volume, (9, 18, 18), order=3)
    blended = [min(np.abs(joint[z] - in_plane[k]).max() for k in range(6)) for z in range(9)]
    assert max(blended) > 10.0  # the joint cubic zoom mixes slices 100 units apart


def test_joint_scheme_is_unchanged_and_old_plans_resample_jointly():
    volume = _slices()
    expected = ndimage.zoom(volume, (1.5, 1.0, 1.0), order=3, mode="nearest", grid_mode=True)
    assert np.array_equal(resample(volume, (3.0, 1.0, 1.0), (2.0, 1.0, 1.0), order=3), expected)
    assert plan_resampling({"target_spacing": [1, 1, 1]}) == JOINT_RESAMPLING
    assert plan_resampling({"resampling": RESAMPLING})["scheme"] == "separate_coarse_axis"
    with pytest.raises(VfnetError, match="resampling scheme 'cubic'"):
        plan_resampling({"resampling": {"scheme": "cubic", "anisotropy_threshold": 3.0}})


def test_preprocessing_keeps_thick_slices_apart():
    volume = _slices(depth=4)
    plan = {"target_spacing": [4.0, 1.0, 1.0], "resampling": SEPARATE, "normalization": {"0": {"scheme": "ct",
            "clip": [-1e6, 1e6], "mean": 0.0, "std": 1.0}}}
    image = preprocess_image([volume], (8.0, 1.0, 1.0), plan)
    assert image.shape == (1, 8, 12, 12)
    for z in range(8):
        assert min(np.abs(image[0, z] - volume[k]).max() for k in range(4)) < 1e-3


def test_labels_back_to_a_thick_slice_grid_take_the_nearest_slice():
    classes = np.zeros((8, 10, 10), np.uint8)
    classes[2:5, 3:7, 3:7] = 1
    properties = {"canonical_shape": [4, 10, 10], "labels": {"background": 0, "organ": 3}}
    separate = labels_to_input_geometry(classes, properties, 2, coarse=0)
    assert separate.shape == (4, 10, 10)
    assert set(np.unique(separate)) == {0, 3}
    # each output slice is one of the input's slices, whole
    for z in range(4):
        assert any(np.array_equal(separate[z] == 3, classes[k] == 1) for k in range(8))
