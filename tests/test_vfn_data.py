"""VFN patch sampling: rotations move the view channels with their axes."""

from __future__ import annotations

import numpy as np

from vfnet.training.data_vfn import VfnPatchSampler, allowed_axis_orders


def _gradient_sample(size=8):
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij"))
    image = grid.sum(0, keepdims=True)
    # view channel v holds the coordinate along the axis that view v slices
    inputs = np.concatenate([image, grid]).astype(np.float16)
    label = (grid[0] > grid[2]).astype(np.uint8)
    return inputs, label


def test_allowed_orders_need_equal_extent_and_spacing():
    assert len(allowed_axis_orders([64, 64, 64], [1, 1, 1])) == 6
    assert allowed_axis_orders([40, 56, 40], [1, 1, 1]) == [(0, 1, 2), (2, 1, 0)]
    assert allowed_axis_orders([64, 64, 64], [2.5, 1, 1]) == [(0, 1, 2), (0, 2, 1)]


def test_view_channels_follow_their_axes_under_every_augmentation():
    sampler = VfnPatchSampler([_gradient_sample()], [8, 8, 8], [1, 1, 1], num_image_channels=1,
                              num_foreground=1, batch_size=16, seed=3)
    batch = next(sampler)
    assert batch["data"].shape == (16, 4, 8, 8, 8) and batch["target"].shape == (16, 1, 8, 8, 8)
    for x in batch["data"]:
        for axis in range(3):
            profile = np.moveaxis(x[1 + axis], axis, 0)
            # along its own axis the channel changes by exactly one per voxel (up or down after a flip)
            steps = np.abs(np.diff(profile, axis=0))
            np.testing.assert_array_equal(steps, 1)


def test_labels_move_with_the_image():
    inputs, label = _gradient_sample()
    sampler = VfnPatchSampler([(inputs, label)], [8, 8, 8], [1, 1, 1], 1, 1, batch_size=8, seed=1)
    batch = next(sampler)
    for x, y in zip(batch["data"], batch["target"]):
        # the label is (original z > original x); those coordinates now sit in two of the view
        # channels, whichever way the patch was turned, and the relation must hold voxel by voxel
        holds = [np.array_equal(y[0] == 1, x[1 + p] > x[1 + q]) for p in range(3) for q in range(3) if p != q]
        assert any(holds)


def test_no_image_variant_drops_image_channels_and_small_samples_are_padded():
    inputs, label = _gradient_sample(6)
    sampler = VfnPatchSampler([(inputs, label)], [8, 8, 8], [1, 1, 1], 1, 1, batch_size=2,
                              use_image=False, augment=False)
    batch = next(sampler)
    assert batch["data"].shape == (2, 3, 8, 8, 8)
    np.testing.assert_array_equal(batch["data"][0, :, 6:], 0)


def test_tensor_samples_give_the_same_batches_as_arrays():
    """Samples moved to a device (samples_on_device) are cropped, turned, flipped and padded there
    into the very batches the numpy path gives for the same seed."""
    import torch

    rng = np.random.default_rng(0)
    samples = [_gradient_sample(8), _gradient_sample(6)]  # the 6³ one is padded to the patch
    samples.append((rng.random((4, 10, 9, 8)).astype(np.float16), rng.integers(0, 2, (10, 9, 8)).astype(np.uint8)))
    tensors = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in samples]
    for augment, use_image in ((True, True), (False, False)):
        common = {"patch_size": [8, 8, 8], "spacing": [1, 1, 1], "num_image_channels": 1, "num_foreground": 1,
                      "batch_size": 6, "augment": augment, "use_image": use_image, "seed": 5}
        arrays, on_device = VfnPatchSampler(samples, **common), VfnPatchSampler(tensors, **common)
        for _ in range(4):
            expected, got = next(arrays), next(on_device)
            assert isinstance(got["data"], torch.Tensor) and got["data"].dtype == torch.float32
            assert got["target"].dtype == torch.int64
            np.testing.assert_array_equal(got["data"].numpy(), expected["data"])
            np.testing.assert_array_equal(got["target"].numpy(), expected["target"])


def test_samples_stay_in_ram_off_the_gpu():
    from vfnet.training.data_vfn import samples_on_device

    samples = [_gradient_sample()]
    assert samples_on_device(samples, "cpu") is samples


def test_view_dropout_replaces_one_view_by_the_others_mean_and_leaves_the_samples_alone():
    """With view_dropout 1 every patch has exactly one view's maps replaced by the mean of the other
    two (the image and the label untouched); the stored samples are never changed; with 0 the
    batches are those of a sampler without the option."""
    import torch

    rng = np.random.default_rng(0)
    inputs = rng.random((1 + 3 * 2, 8, 8, 8)).astype(np.float32)  # image + 3 views × 2 foreground classes
    label = rng.integers(0, 3, (8, 8, 8)).astype(np.uint8)
    common = {"patch_size": [8, 8, 8], "spacing": [1, 1, 1], "num_image_channels": 1, "num_foreground": 2,
              "batch_size": 12, "augment": False, "seed": 2}
    for sample in ((inputs.copy(), label), (torch.from_numpy(inputs.copy()), torch.from_numpy(label))):
        batch = next(VfnPatchSampler([sample], view_dropout=1.0, **common))
        data = np.asarray(batch["data"])
        dropped = []
        for x in data:
            np.testing.assert_array_equal(x[0], inputs[0])
            same = [np.array_equal(x[1 + 2 * v:3 + 2 * v], inputs[1 + 2 * v:3 + 2 * v]) for v in range(3)]
            assert sum(same) == 2
            view = same.index(False)
            others = [1 + 2 * v for v in range(3) if v != view]
            np.testing.assert_allclose(x[1 + 2 * view:3 + 2 * view],
                                       (inputs[others[0]:others[0] + 2] + inputs[others[1]:others[1] + 2]) / 2,
                                       rtol=1e-6)
            dropped.append(view)
        assert len(set(dropped)) == 3  # each view is dropped in some patch of 12
        np.testing.assert_array_equal(np.asarray(sample[0]), inputs)  # the sample itself is unchanged
    plain, zero = VfnPatchSampler([(inputs, label)], **common), VfnPatchSampler([(inputs, label)], view_dropout=0, **common)
    np.testing.assert_array_equal(next(plain)["data"], next(zero)["data"])


def _view_maps(rng, num_foreground: int, shape=(8, 8, 8)) -> np.ndarray:
    """Foreground maps (F, ...) of one view: a softmax over F + 1 classes without its background."""
    logits = rng.normal(0, 2, (num_foreground + 1, *shape))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return probs[1:].astype(np.float32)


def test_recalibrated_maps_keep_the_maps_at_identity_and_move_confidence_and_volume_as_asked():
    """Temperature 1 and no bias give the maps back; a temperature above 1 sharpens every voxel's
    winner without changing it; a positive bias on one class makes it win more voxels, a negative
    one fewer; the result is a probability map (foreground sums ≤ 1); tensors give the same."""
    import torch

    from vfnet.training.data_vfn import recalibrated_maps

    rng = np.random.default_rng(3)
    maps = _view_maps(rng, 2)

    def full(fg):  # with the background
        return np.concatenate([1 - fg.sum(0)[None], fg])

    def winners(fg):
        return np.argmax(full(fg), axis=0)

    np.testing.assert_allclose(recalibrated_maps(maps, 1.0, [0.0, 0.0]), maps, atol=2e-4)
    sharp = recalibrated_maps(maps, 2.0, [0.0, 0.0])
    np.testing.assert_array_equal(winners(sharp), winners(maps))
    assert np.all(full(sharp).max(0) >= full(maps).max(0) - 1e-5)
    assert np.mean(full(sharp).max(0)) > np.mean(full(maps).max(0)) + 0.02
    grown, shrunk = recalibrated_maps(maps, 1.0, [1.0, 0.0]), recalibrated_maps(maps, 1.0, [-1.0, 0.0])
    counts = [np.sum(winners(m) == 1) for m in (shrunk, maps, grown)]
    assert counts[0] < counts[1] < counts[2]
    for m in (sharp, grown, shrunk):
        assert m.min() >= 0 and m.sum(0).max() <= 1 + 1e-5
    as_tensor = recalibrated_maps(torch.from_numpy(maps), 0.7, [0.3, -0.4]).numpy()
    np.testing.assert_allclose(as_tensor, recalibrated_maps(maps, 0.7, [0.3, -0.4]), rtol=1e-5, atol=1e-6)


def test_map_jitter_recalibrates_each_view_and_leaves_image_label_and_samples_alone():
    """With map_jitter every patch's three views are recalibrated, each differently; the image and
    the label are untouched, the maps stay probabilities, the stored sample is unchanged; with 0
    the batches are those of a sampler without the option."""
    import torch

    rng = np.random.default_rng(4)
    inputs = np.concatenate([rng.random((1, 8, 8, 8)), *[_view_maps(rng, 2) for _ in range(3)]]).astype(np.float32)
    label = rng.integers(0, 3, (8, 8, 8)).astype(np.uint8)
    common = {"patch_size": [8, 8, 8], "spacing": [1, 1, 1], "num_image_channels": 1, "num_foreground": 2,
              "batch_size": 6, "augment": False, "seed": 5}
    for sample in ((inputs.copy(), label), (torch.from_numpy(inputs.copy()), torch.from_numpy(label))):
        batch = next(VfnPatchSampler([sample], map_jitter=0.5, **common))
        data, target = np.asarray(batch["data"]), np.asarray(batch["target"])
        for x, y in zip(data, target):
            np.testing.assert_array_equal(x[0], inputs[0])
            np.testing.assert_array_equal(y[0], label)
            changes = [float(np.abs(x[1 + 2 * v:3 + 2 * v] - inputs[1 + 2 * v:3 + 2 * v]).mean()) for v in range(3)]
            assert min(changes) > 1e-3 and len({round(c, 6) for c in changes}) == 3
            for v in range(3):
                maps = x[1 + 2 * v:3 + 2 * v]
                assert maps.min() >= 0 and maps.sum(0).max() <= 1 + 1e-5
        np.testing.assert_array_equal(np.asarray(sample[0]), inputs)
    plain, zero = VfnPatchSampler([(inputs, label)], **common), VfnPatchSampler([(inputs, label)], map_jitter=0, **common)
    np.testing.assert_array_equal(next(plain)["data"], next(zero)["data"])


def test_a_vfn_takes_the_plans_map_jitter_unless_given_one():
    """The plan's ``vfn.map_jitter`` is a VFN unit's strength when none is given; a given one (a benchmark
    variant, 0 included) replaces it."""
    from types import SimpleNamespace

    from vfnet.training.train_vfn import VfnRecipe

    setup = SimpleNamespace(plan=SimpleNamespace(vfn=SimpleNamespace(map_jitter=0.3)))
    assert VfnRecipe(True, 1, 1).planned(setup, "map_jitter") == 0.3
    assert VfnRecipe(True, 1, 1, map_jitter=0.0).planned(setup, "map_jitter") == 0.0
    assert VfnRecipe(True, 1, 1, map_jitter=0.5).planned(setup, "map_jitter") == 0.5
