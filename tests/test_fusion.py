"""Fusion methods, ROI and sliding window, post-processing."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.experiment_planning.plans import plan_vfn
from vfnet.fusion import (
    METHODS,
    VfnConfig,
    crop_to_roi,
    fuse,
    keep_largest_component,
    majority_vote,
    mean_fusion,
    pad_to_size,
    roi_from_mask,
    sliding_window_starts,
    staple_fusion,
    vfn_input,
)
from vfnet.fusion.methods import (
    _majority_roi,
    _prior_probabilities,
    class_argmax,
    mean_prior_labels,
    mean_prior_probabilities,
    vfn_fused_probabilities,
)
from vfnet.inference.sliding_window import sliding_window_probabilities
from vfnet.networks.vfn import build_vfn, init_as_view_average
from vfnet.views import VIEWS
from vfnet.windows import window_grid, window_weights

torch.set_num_threads(1)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2)


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


# --- majority, mean, STAPLE -------------------------------------------------------------

def hand_built_views() -> dict[str, np.ndarray]:
    """Four voxels (1×1×4) of a 3-class problem, each probability vector chosen by hand."""
    per_voxel = [  # (axial, coronal, sagittal) probabilities of background, class 1, class 2
        ([0.1, 0.8, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]),     # votes 1, 1, 2 → 1
        ([0.0, 0.0, 1.0], [0.3, 0.4, 0.3], [0.3, 0.4, 0.3]),     # votes 2, 1, 1 → 1, though the mean says 2
        ([0.4, 0.35, 0.25], [0.1, 0.5, 0.4], [0.1, 0.2, 0.7]),   # votes 0, 1, 2 → mean [.2, .35, .45] → 2
        ([0.5, 0.45, 0.05], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]),  # votes 0, 1, 2 → mean [.28, .55, .17] → 1
    ]
    maps = {view: np.zeros((3, 1, 1, 4), dtype=np.float32) for view in VIEWS}
    for x, triple in enumerate(per_voxel):
        for view, probs in zip(VIEWS, triple):
            maps[view][:, 0, 0, x] = probs
    return maps


def test_majority_vote_two_of_three_and_mean_fallback():
    fused = majority_vote(hand_built_views())
    assert fused.dtype == np.uint8
    np.testing.assert_array_equal(fused[0, 0], [1, 1, 2, 1])


def counted_majority(maps: dict[str, np.ndarray]) -> np.ndarray:
    """The majority vote written out plainly: class counts per voxel, the mean's argmax where none has most."""
    votes = np.stack([np.argmax(p, axis=0) for p in maps.values()])
    counts = np.stack([(votes == c).sum(0) for c in range(next(iter(maps.values())).shape[0])])
    mean = sum(p.astype(np.float32) for p in maps.values()) / len(maps)
    return np.where(counts.max(0) * 2 > len(maps), counts.argmax(0), np.argmax(mean, axis=0)).astype(np.uint8)


@pytest.mark.parametrize("num_views", [1, 2, 3])
@pytest.mark.parametrize("num_classes", [2, 5])
def test_majority_vote_equals_counting_votes_on_random_maps(num_views, num_classes):
    rng = np.random.default_rng(num_views * 10 + num_classes)
    shape = (num_classes, 6, 7, 5)
    # quantised probabilities, so that ties inside a view and between the views' votes occur
    maps = {view: np.round(rng.dirichlet(np.ones(num_classes), shape[1:]).transpose(3, 0, 1, 2), 1).astype(np.float32)
            for view in VIEWS[:num_views]}
    votes = np.stack([np.argmax(p, axis=0) for p in maps.values()])
    agreed = (votes == votes[0]).all(0)
    assert agreed.any() and (num_views == 1 or not agreed.all())  # the views agree somewhere, and disagree
    np.testing.assert_array_equal(majority_vote(maps), counted_majority(maps))


def test_vote_roi_spanning_the_volume_needs_only_some_foreground_of_the_vote():
    """Where the minimum size spans the volume, the ROI is the whole volume as soon as the vote has foreground,
    found in any slab of the candidates' box (here only in the last slices), and None where views vote
    foreground but no label has a majority."""
    shape = (13, 10, 9)
    labels = np.zeros(shape, dtype=int)
    labels[11:13, 4:6, 3:5] = 1  # the vote's only foreground, in the last slab of the box below
    lone = labels.copy()
    lone[1:3, 1:3, 1:3] = 1  # one view alone votes here: it widens the candidates' box, not the vote
    maps = {"axial": one_hot(lone, 2), "coronal": one_hot(labels, 2), "sagittal": one_hot(labels, 2)}
    spanning = [13, 10, 9]
    assert _majority_roi(list(maps.values()), 0, spanning) == tuple(slice(0, n) for n in shape)
    assert _majority_roi(list(maps.values()), 0, spanning) == roi_from_mask(majority_vote(maps), 0, spanning, shape)
    assert _majority_roi(list(maps.values()), 0, [13, 10, 8]) == (slice(0, 13), slice(0, 10), slice(0, 8))
    only_one = {"axial": one_hot(lone, 2), "coronal": one_hot(np.zeros(shape, dtype=int), 2),
                "sagittal": one_hot(np.zeros(shape, dtype=int), 2)}
    assert _majority_roi(list(only_one.values()), 0, spanning) is None
    assert not fuse("vfn-noimage", only_one, None, model=ViewEcho(1, use_image=False),
                    vfn_config=VfnConfig(spanning, spanning, 0)).any()


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_mean_prior_labels_are_the_argmax_of_its_probabilities(num_classes):
    """The prior's labels without its probabilities: the argmax of :func:`mean_prior_probabilities`, inside a
    ROI, with float16 maps, maps slightly outside [0, 1] and foreground summing above 1; a view's value above 1
    is clipped, as in the probabilities (unclipped, the voxel below would change label)."""
    rng = np.random.default_rng(num_classes)
    shape = (7, 9, 8)
    maps = {}
    for view in VIEWS:
        p = rng.dirichlet(np.full(num_classes, 0.4), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
        p[1:, 0, 0, 0] = 1.0 / (num_classes - 1) + 1e-3
        p[-1, 1, 1, 1] = -1e-4
        maps[view] = p
    maps["coronal"] = maps["coronal"].astype(np.float16)
    # one voxel: the axial view's out-of-range organ would outvote the background of the other two unclipped
    for view, values in zip(VIEWS, ([0.0, 3.0], [0.9, 0.1], [0.9, 0.1])):
        maps[view][:, 3, 4, 4] = values + [0.0] * (num_classes - 2)
    roi = (slice(1, 7), slice(0, 8), slice(2, 8))
    expected = class_argmax(mean_prior_probabilities(maps, roi))
    got = mean_prior_labels(maps, roi)
    assert got.dtype == np.uint8 and got.shape == (6, 8, 6)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) == num_classes
    assert got[2, 4, 2] == 0
    unclipped = class_argmax(sum(np.asarray(crop_to_roi(m, roi), dtype=np.float32) for m in maps.values()))
    assert unclipped[2, 4, 2] == 1
    np.testing.assert_array_equal(mean_prior_labels(maps), class_argmax(mean_prior_probabilities(maps)))


def test_class_argmax_equals_numpy_argmax_with_ties():
    from vfnet.fusion.methods import class_argmax

    probs = np.round(np.random.default_rng(3).random((4, 5, 6, 7)), 1).astype(np.float32)
    assert (probs[0] == probs[1]).any()
    labels = class_argmax(probs)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=0))


def test_mean_fusion_is_argmax_of_average():
    np.testing.assert_array_equal(mean_fusion(hand_built_views())[0, 0], [1, 2, 2, 1])


def test_fuse_dispatches_with_one_signature():
    maps = hand_built_views()
    np.testing.assert_array_equal(fuse("majority", maps, None), majority_vote(maps))
    np.testing.assert_array_equal(fuse("mean", maps, None), mean_fusion(maps))
    with pytest.raises(VfnetError, match="unknown"):
        fuse("nls", maps, None)
    with pytest.raises(ModelNotFoundError):
        fuse("vfn", maps, np.zeros((1, 1, 1, 4)))
    with pytest.raises(ModelNotFoundError, match="stack"):
        fuse("stack", maps)
    assert set(METHODS) == {"majority", "mean", "staple", "stack", "vfn", "vfn-noimage"}


def test_views_of_different_shapes_are_rejected():
    maps = hand_built_views()
    maps["sagittal"] = np.zeros((3, 1, 1, 5), dtype=np.float32)
    with pytest.raises(VfnetError, match="one shape"):
        majority_vote(maps)


def test_staple_of_identical_maps_returns_that_map():
    shape = (12, 14, 10)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[ball(shape, (6, 7, 5), 4)] = 1
    labels[ball(shape, (6, 7, 5), 2)] = 2
    maps = {view: one_hot(labels, 3) for view in VIEWS}
    np.testing.assert_array_equal(staple_fusion(maps), labels)
    np.testing.assert_array_equal(fuse("staple", maps, None), labels)


def test_staple_stops_at_its_iteration_cap_where_disagreeing_views_never_converge():
    from vfnet.fusion.methods import STAPLE_MAX_ITERATIONS, staple_probability

    shape = (20, 48, 48)
    # three mostly disjoint blobs: SimpleITK's EM creeps on for thousands of iterations here
    masks = [ball(shape, (10, 10, 24), 4), ball(shape, (10, 24, 24), 8), ball(shape, (10, 24, 30), 6)]
    _, uncapped = staple_probability(masks, max_iterations=1000)
    assert uncapped == 1000  # the case needs the cap
    probability, iterations = staple_probability(masks)
    assert iterations == STAPLE_MAX_ITERATIONS <= 100
    assert np.isfinite(probability).all() and 0 <= probability.min() and probability.max() <= 1
    maps = {view: one_hot(mask.astype(np.int64), 2) for view, mask in zip(VIEWS, masks)}
    fused = staple_fusion(maps)
    assert fused.shape == shape and set(np.unique(fused)) <= {0, 1}


def test_staple_of_empty_maps_is_background_not_nan():
    shape = (8, 9, 7)
    empty = {view: one_hot(np.zeros(shape, dtype=np.int64), 3) for view in VIEWS}
    fused = staple_fusion(empty)
    assert fused.dtype == np.uint8 and not fused.any()
    # One class absent (NaN inside SimpleITK) while the other is present.
    labels = np.zeros(shape, dtype=np.int64)
    labels[2:5, 3:6, 2:5] = 1
    np.testing.assert_array_equal(staple_fusion({view: one_hot(labels, 3) for view in VIEWS}), labels)


# --- ROI and sliding window -------------------------------------------------------------

def test_roi_from_mask_margin_min_size_and_clipping():
    mask = np.zeros((30, 40, 20), dtype=bool)
    mask[10:14, 18:22, 1:3] = True
    roi = roi_from_mask(mask, margin=[2, 3, 4], min_size=[8, 16, 40])
    assert roi[0] == slice(8, 16)           # box 10..14 + 2 on both sides: already 8 long
    assert roi[1] == slice(12, 28)          # 15..25 grown evenly to 16
    assert roi[2] == slice(0, 20)           # clipped at 0, and min_size 40 > volume: whole axis
    assert roi_from_mask(np.zeros((3, 4, 5)), 2, 2) == (slice(0, 3), slice(0, 4), slice(0, 5))
    assert crop_to_roi(np.zeros((2, 30, 40, 20)), roi).shape == (2, 8, 16, 20)


def test_mask_bounds_equal_the_nonzero_voxels_extent():
    from vfnet.fusion.roi import mask_bounds

    rng = np.random.default_rng(5)
    for density in (0.0005, 0.01, 0.5):
        mask = rng.random((9, 11, 13)) < density
        coords = np.nonzero(mask)
        expected = [(int(c.min()), int(c.max()) + 1) for c in coords] if coords[0].size else None
        assert mask_bounds(mask) == expected
        assert mask_bounds(mask.astype(np.uint8) * 3) == expected  # nonzero, not only bool
    assert mask_bounds(np.zeros((3, 4, 5), dtype=np.uint8)) is None
    one = np.zeros((3, 4, 5), dtype=bool)
    one[2, 0, 4] = True
    assert mask_bounds(one) == [(2, 3), (0, 1), (4, 5)]


def test_roi_enlarged_near_border_is_shifted_inside():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[0, 19, 10] = True
    roi = roi_from_mask(mask, margin=1, min_size=6)
    assert roi == (slice(0, 6), slice(14, 20), slice(8, 14))


def test_pad_to_size_round_trip():
    array = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    padded, back = pad_to_size(array, (8, 4, 6))
    assert padded.shape == (2, 8, 4, 6)
    np.testing.assert_array_equal(padded[(slice(None), *back)], array)
    assert padded.sum() == array.sum()


@pytest.mark.parametrize("size,patch,stride", [(100, 40, 20), (41, 40, 20), (40, 40, 20), (97, 16, 5), (7, 16, 8)])
def test_sliding_window_starts_cover_the_extent(size, patch, stride):
    starts = sliding_window_starts(size, patch, stride)
    covered = np.zeros(max(size, patch), dtype=bool)
    for start in starts:
        covered[start:start + patch] = True
    assert covered[:size].all()
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] == max(size - patch, 0)
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


def test_window_weights_are_positive_and_centred():
    gauss = window_weights((16, 12, 8))
    assert gauss.min() > 0 and gauss.max() == pytest.approx(1.0)
    assert gauss[8, 6, 4] > gauss[0, 0, 0]
    assert (window_weights((4, 4, 4), "uniform") == 1).all()


class ViewEcho(nn.Module):
    """Stand-in VFN whose foreground probability is exactly one input channel; records its windows."""

    def __init__(self, channel: int, use_image: bool = True):
        super().__init__()
        self.channel, self.use_image, self.windows = channel, use_image, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows.append(tuple(x.shape))
        return 30.0 * (x[:, self.channel:self.channel + 1] - 0.5)


def sliding_case(shape=(40, 44, 36)):
    """One organ: majority foreground a ball; the axial view adds a slab inside the ROI and a ball far outside."""
    rng = np.random.default_rng(3)
    organ = ball(shape, (20, 22, 18), 5)
    axial = organ.copy()
    axial[18:22, 14:17, 15:20] = True                   # near the organ: inside the ROI
    axial[ball(shape, (3, 3, 3), 2)] = True             # far corner: outside the ROI
    coronal, sagittal = organ.copy(), organ.copy()
    coronal[ball(shape, (36, 40, 32), 2)] = True        # seen by one view only: not in the majority
    maps = {"axial": one_hot(axial.astype(int), 2), "coronal": one_hot(coronal.astype(int), 2),
            "sagittal": one_hot(sagittal.astype(int), 2)}
    image = rng.normal(100, 20, (1, *shape)).astype(np.float32)
    return maps, image, axial


@pytest.mark.parametrize("weighting,batch_size", [("gaussian", 3), ("uniform", 1)])
def test_vfn_sliding_window_inside_roi_majority_outside(weighting, batch_size):
    maps, image, axial = sliding_case()
    config = VfnConfig(patch_size=[16, 16, 16], stride=[8, 8, 8], roi_margin=[3, 3, 3],
                       weighting=weighting, batch_size=batch_size)
    model = ViewEcho(channel=1)  # channel 0 is the image, 1 the axial foreground
    fused = fuse("vfn", maps, image, model=model, vfn_config=config)
    majority = majority_vote(maps)
    roi = roi_from_mask(majority, config.roi_margin, config.patch_size)
    inside = np.zeros(fused.shape, dtype=bool)
    inside[roi] = True
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(fused[inside], axial[inside])
    np.testing.assert_array_equal(fused[~inside], majority[~inside])
    assert fused[18:22, 14:17, 15:20].all() and not fused[3, 3, 3]
    assert not majority[18:22, 14:17, 15:20].all()
    roi_shape = tuple(s.stop - s.start for s in roi)
    count = len(window_grid(roi_shape, config.patch_size, config.stride))
    assert count > 1
    # every window once, in chunks of batch_size; a lone window runs alone (vfnet.networks.conv)
    chunks = [min(batch_size, count - first) for first in range(0, count, batch_size)]
    assert [w[0] for w in model.windows] == chunks
    assert all(w[1:] == (4, 16, 16, 16) for w in model.windows)  # image + three views


class XRamp(torch.nn.Module):
    """Logits that rise along x whatever the input: not mirror-symmetric."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3, 3, x.shape[-1])
        return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()


def test_mirroring_is_explicit_and_independent_of_batching():
    volume = np.zeros((4, 16, 16, 24), dtype=np.float32)
    lone = sliding_window_probabilities(XRamp(), volume, [16, 16, 16], [8, 8, 8], batch_size=1)
    batched = sliding_window_probabilities(XRamp(), volume, [16, 16, 16], [8, 8, 8], batch_size=2)
    np.testing.assert_allclose(lone, batched, atol=1e-6)  # no hidden test-time augmentation
    assert lone[1, :, :, -1].min() > 0.9
    mirrored = sliding_window_probabilities(XRamp(), volume, [16, 16, 16], [8, 8, 8], mirror_axes=(2,))
    # sigmoid(a) and sigmoid(-a) average to one half everywhere: asked for, every window is mirrored
    np.testing.assert_allclose(mirrored[1], 0.5, atol=1e-6)


class Counting(torch.nn.Module):
    """XRamp with one parameter, counting how often it is moved."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.moves = 0

    def _apply(self, fn, recurse=True):
        self.moves += 1
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return XRamp()(x) * self.scale


def test_lone_window_is_the_networks_output_and_a_placed_model_is_not_moved():
    model = Counting().eval()
    volume = np.zeros((4, 16, 16, 16), dtype=np.float32)
    lone = sliding_window_probabilities(model, volume, [16, 16, 16], [8, 8, 8])
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(volume)[None]))[0, 0].numpy()
    np.testing.assert_array_equal(lone[1], expected)  # no weights multiplied in and divided out again
    np.testing.assert_allclose(lone[0] + lone[1], 1, atol=1e-6)
    assert model.moves == 0 and not model.training  # already on the CPU, still in eval mode
    # windows that overlap are weighted as before, with the weights computed once per patch
    wide = sliding_window_probabilities(model, np.zeros((4, 16, 16, 24), dtype=np.float32), [16, 16, 16], [8, 8, 8])
    again = sliding_window_probabilities(model, np.zeros((4, 16, 16, 24), dtype=np.float32), [16, 16, 16], [8, 8, 8])
    np.testing.assert_array_equal(wide, again)
    assert wide[1, :, :, -1].min() > 0.9 and wide[1, :, :, 0].max() < 0.1
    model.train()
    sliding_window_probabilities(model, volume, [16, 16, 16], [8, 8, 8])
    assert model.training  # its mode is restored


def test_vfn_on_volume_smaller_than_patch():
    shape = (10, 12, 9)
    labels = ball(shape, (5, 6, 4), 3).astype(int)
    maps = {view: one_hot(labels, 2) for view in VIEWS}
    config = VfnConfig(patch_size=[16, 16, 16], stride=[8, 8, 8], roi_margin=[2, 2, 2])
    fused = fuse("vfn-noimage", maps, None, model=ViewEcho(channel=2, use_image=False), vfn_config=config)
    np.testing.assert_array_equal(fused, labels)


def test_vfn_with_averaging_weights_equals_majority_through_fuse():
    maps, image, _ = sliding_case((24, 28, 20))
    plan = {"vfn": plan_vfn((24, 28, 20), (10, 10, 10))}
    model = init_as_view_average(build_vfn(plan, num_image_channels=1, num_classes=2))
    fused = fuse("vfn", maps, image, model=model, vfn_config=plan["vfn"])
    np.testing.assert_array_equal(fused, majority_vote(maps))


def test_vfn_noimage_refuses_an_image_model():
    maps, image, _ = sliding_case((24, 28, 20))
    config = VfnConfig([16, 16, 16], [8, 8, 8], [2, 2, 2])
    with pytest.raises(VfnetError, match="with the image"):
        fuse("vfn-noimage", maps, image, model=ViewEcho(1, use_image=True), vfn_config=config)


def test_vfn_input_scales_image_and_orders_views():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (2, 10, 11, 12)).astype(np.float32)
    image[0, 0, 0, 0] = 1e6  # an outlier beyond the 99.5 percentile is clipped, not stretched over
    maps = {view: rng.random((3, 10, 11, 12)).astype(np.float32) for view in VIEWS}
    x = vfn_input(image, maps, use_image=True)
    assert x.shape == (2 + 3 * 2, 10, 11, 12) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert np.median(x[0]) == pytest.approx(0.5, abs=0.1)
    np.testing.assert_array_equal(x[2:4], maps["axial"][1:])
    np.testing.assert_array_equal(x[6:8], maps["sagittal"][1:])
    assert vfn_input(None, maps, use_image=False).shape[0] == 6
    roi = (slice(2, 5), slice(0, 4), slice(3, 9))
    np.testing.assert_array_equal(vfn_input(image, maps, roi=roi), x[(slice(None), *roi)])
    with pytest.raises(VfnetError, match="missing: coronal"):
        vfn_input(image, {"axial": maps["axial"], "sagittal": maps["sagittal"]})


# --- post-processing --------------------------------------------------------------------

def test_keep_largest_component_removes_small_island():
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[2:7, 2:7, 2:7] = 1
    labels[10, 10, 10] = 1          # island of class 1
    labels[9:11, 1:3, 1:3] = 2      # class 2's only component stays
    cleaned = keep_largest_component(labels, num_classes=3)
    assert cleaned[10, 10, 10] == 0
    assert (cleaned[2:7, 2:7, 2:7] == 1).all() and (cleaned[9:11, 1:3, 1:3] == 2).all()
    assert cleaned.sum() == labels.sum() - 1
    maps = {view: one_hot(labels.astype(int), 3) for view in VIEWS}
    np.testing.assert_array_equal(fuse("majority", maps, None, postprocess=True), cleaned)


# --- the VFN's ROI and a VFN that adds nothing to its prior ---------------------------------

@pytest.mark.parametrize("num_classes,seed", [(2, 0), (3, 1), (5, 2)])
def test_vote_roi_counted_in_a_box_equals_the_whole_volume_votes(num_classes, seed):
    # the vote is counted only inside the box where some view's argmax is foreground; its ROI must not change
    rng = np.random.default_rng(seed)
    shape = (20, 24, 18)
    labels = np.zeros(shape, dtype=int)
    labels[ball(shape, (10, 12, 9), 4)] = 1 + rng.integers(0, num_classes - 1)
    maps = {}
    for view in VIEWS:
        noisy = np.where(rng.random(shape) < 0.01, rng.integers(0, num_classes, shape), labels)
        soft = one_hot(noisy, num_classes) + rng.random((num_classes, *shape)).astype(np.float32) * 0.6
        maps[view] = (soft / soft.sum(0, keepdims=True)).astype(np.float16)
    # a far voxel where the three views vote 0, 1, 2 and only the mean's argmax makes it foreground
    if num_classes >= 3:
        for view, probs in zip(VIEWS, ([0.5, 0.45, 0.05], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4])):
            maps[view][:, 19, 0, 17] = probs + [0.0] * (num_classes - 3)
    margin, min_size = [2, 3, 1], [8, 8, 8]
    expected = roi_from_mask(majority_vote(maps), margin, min_size, shape)
    assert _majority_roi(list(maps.values()), margin, min_size) == expected
    if num_classes >= 3:
        assert expected[0].stop == 20 and expected[1].start == 0 and expected[2].stop == 18
    background = {view: one_hot(np.zeros(shape, dtype=int), num_classes) for view in VIEWS}
    assert _majority_roi(list(background.values()), margin, min_size) is None
    assert not fuse("vfn-noimage", background, None, model=ViewEcho(1, use_image=False),
                    vfn_config=VfnConfig([8, 8, 8], [8, 8, 8], margin)).any()


@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("corrected", [False, True])
def test_mean_prior_from_the_maps_is_the_networks_prior(num_classes, corrected):
    """The mean prior computed from the views' maps (no VFN input) gives the probabilities of the
    network's prior logits, with and without a correction of them, for one organ and several, inside a
    ROI; maps with rounding outside [0, 1] and sums above 1 included."""
    rng = np.random.default_rng(num_classes)
    shape = (6, 9, 7)
    maps = {}
    for view in VIEWS:
        p = rng.dirichlet(np.full(num_classes, 0.3), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
        p[1:, 0, 0, 0] = 1.0 / (num_classes - 1) + 1e-3  # foreground summing above 1: background clamped
        p[-1, 1, 1, 1] = -1e-4
        maps[view] = p
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    roi = (slice(1, 6), slice(0, 8), slice(2, 7))
    model = build_vfn({"vfn": plan_vfn(shape, (4, 4, 4))}, num_image_channels=1, num_classes=num_classes).eval()
    out = 1 if num_classes == 2 else num_classes
    correction = rng.normal(0, 3, (out, 5, 8, 5)).astype(np.float32) if corrected else None
    expected = _prior_probabilities(model, vfn_input(image, maps, True, roi), correction=correction)
    got = mean_prior_probabilities(maps, roi, correction=correction)
    assert got.shape == expected.shape == (num_classes, 5, 8, 5)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-6)
    if corrected:  # the correction moved the maps: the comparison is not of two unchanged priors
        assert np.abs(got - mean_prior_probabilities(maps, roi)).max() > 0.1


@pytest.mark.parametrize("shortcut", [True, False])
def test_a_vfn_with_image_input_refuses_a_missing_or_misshapen_image(shortcut):
    """Whether or not it runs its network, a VFN with image input names a missing image or one on
    another grid than the maps'."""
    maps, image, _ = sliding_case((24, 28, 20))
    plan = {"vfn": plan_vfn((24, 28, 20), (10, 10, 10))}
    model = build_vfn(plan, num_image_channels=1, num_classes=2).eval()
    config = dataclasses.replace(VfnConfig.from_plan(plan), shortcut=shortcut)
    with pytest.raises(VfnetError, match="needs the image"):
        fuse("vfn", maps, None, model=model, vfn_config=config)
    with pytest.raises(VfnetError, match=r"image shape \(24, 28, 19\) differs"):
        fuse("vfn", maps, image[..., :19], model=model, vfn_config=config)


@pytest.mark.parametrize("downsample", [None, (1, 2, 2)])
def test_vfn_that_kept_iteration_0_fuses_as_its_prior_without_running_its_network(downsample, monkeypatch):
    maps, image, _ = sliding_case((24, 28, 20))
    plan = {"vfn": plan_vfn((24, 28, 20), (10, 10, 10))}
    model = build_vfn(plan, num_image_channels=1, num_classes=2).eval()
    model.input_downsample = downsample
    assert model.view_prior and model.adds_nothing()
    config = VfnConfig.from_plan(plan)
    network_run = dataclasses.replace(config, shortcut=False)
    expected = vfn_fused_probabilities(maps, image, model, network_run)
    labels = fuse("vfn", maps, image, model=model, vfn_config=network_run)
    calls = []
    correction = model.correction
    monkeypatch.setattr(model, "correction", lambda x: calls.append(x.shape) or correction(x))
    np.testing.assert_allclose(vfn_fused_probabilities(maps, image, model, config), expected, atol=1e-6)
    np.testing.assert_array_equal(fuse("vfn", maps, image, model=model, vfn_config=config), labels)
    assert not calls
    with torch.no_grad():
        model.head.bias.fill_(0.5)  # a trained head: the network runs and moves the maps
    assert not model.adds_nothing()
    moved = vfn_fused_probabilities(maps, image, model, config)
    assert calls and np.abs(moved - expected).max() > 0.05
    # zeroing the head (as fusion.py times a VFN at iteration 0) brings back the prior, and the shortcut
    assert model.zero_head().adds_nothing()
    np.testing.assert_allclose(vfn_fused_probabilities(maps, image, model, config), expected, atol=1e-6)
    assert not build_vfn(plan, 1, 2, view_prior=False).adds_nothing()  # no prior: nothing to skip to
