"""View transposes: every view's inverse restores the canonical layout, and slices are the right planes."""

import numpy as np
import pytest
import torch

from vfnet.views import VIEW_AXIS, VIEWS, context_indices, from_view, to_view, view_shape


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("lead", [(), (2,), (3, 2)])
def test_from_view_restores_layout(view, lead):
    volume = np.arange(np.prod(lead + (4, 5, 6))).reshape(lead + (4, 5, 6))
    restored = from_view(to_view(volume, view), view)
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored, volume)
    tensor = torch.from_numpy(volume)
    assert torch.equal(from_view(to_view(tensor, view), view), tensor)


@pytest.mark.parametrize("view", VIEWS)
def test_view_slices_are_planes_of_the_view_axis(view):
    volume = np.random.default_rng(0).normal(size=(4, 5, 6))
    viewed = to_view(volume, view)
    assert viewed.shape == view_shape(volume.shape, view)
    for i in range(viewed.shape[0]):
        plane = np.take(volume, i, axis=VIEW_AXIS[view])
        np.testing.assert_array_equal(viewed[i], plane)


def test_context_indices_clamp_at_edges():
    assert context_indices(0, 5, 3).tolist() == [0, 0, 1]
    assert context_indices(2, 5, 3).tolist() == [1, 2, 3]
    assert context_indices(4, 5, 3).tolist() == [3, 4, 4]
