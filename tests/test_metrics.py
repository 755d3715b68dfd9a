"""Dice, HD95, volume metrics and the statistics helpers against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vfnet.measures.metrics import (
    dice,
    evaluate_case,
    hd95,
    relative_volume_difference,
    surface_distances,
    volume_difference,
    volume_ml,
)
from vfnet.measures.stats import markdown_table, method_table, paired_tests, summarize


def _cube(shape=(6, 6, 6), size=3) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[:size, :size, :size] = True
    return mask


def test_dice_of_cubes_offset_by_one_voxel():
    # 4³ cubes sharing 3·4·4 voxels: 2·48 / (64 + 64)
    a = _cube((8, 8, 8), 4)
    assert dice(a, np.roll(a, 1, axis=2)) == pytest.approx(0.75)
    # 3³ cubes sharing 2·3·3 voxels: 2·18 / 54
    a = _cube()
    assert dice(a, np.roll(a, 1, axis=0)) == pytest.approx(2 / 3)


def test_single_voxel_against_shifted_voxel_gives_the_shift_in_mm():
    a = np.zeros((5, 6, 7), bool)
    a[2, 2, 2] = True
    spacing = (2.0, 0.7, 1.5)
    assert hd95(a, np.roll(a, 3, axis=2), spacing) == pytest.approx(4.5)
    assert hd95(a, np.roll(a, 2, axis=0), spacing) == pytest.approx(4.0)
    diagonal = np.zeros_like(a)
    diagonal[3, 4, 2] = True
    assert hd95(a, diagonal, spacing) == pytest.approx(math.hypot(2.0, 2 * 0.7))
    assert dice(a, diagonal) == 0.0


def test_hd95_of_cubes_offset_along_anisotropic_axes():
    # 3³ cubes offset by one voxel along z (2 mm): by hand, the pooled surface distances are
    # 32 × 0 (shared faces), 2 × 1 mm (each centre to the other's ring, 1 mm in y) and 18 × 2 mm
    a = _cube()
    forward, backward = surface_distances(a, np.roll(a, 1, axis=0), (2.0, 1.0, 1.0))
    pooled = np.sort(np.concatenate([forward, backward]))
    assert pooled.tolist() == [0.0] * 32 + [1.0] * 2 + [2.0] * 18
    assert hd95(a, np.roll(a, 1, axis=0), (2.0, 1.0, 1.0)) == pytest.approx(2.0)
    # the same offset along x (1 mm) gives 1 mm
    assert hd95(a, np.roll(a, 1, axis=2), (2.0, 1.0, 1.0)) == pytest.approx(1.0)


def test_hd95_of_parallel_plates():
    a = np.zeros((8, 6, 6), bool)
    a[2, 1:5, 1:5] = True
    assert hd95(a, np.roll(a, 3, axis=0), (3.0, 1.0, 1.0)) == pytest.approx(9.0)


def test_hd95_ignores_a_single_outlier_that_the_maximum_sees():
    reference = np.zeros((12, 10, 10), bool)
    reference[0] = True
    prediction = reference.copy()
    prediction[10, 5, 5] = True
    forward, backward = surface_distances(reference, prediction, (2.0, 1.0, 1.0))
    assert max(forward.max(), backward.max()) == pytest.approx(20.0)
    assert hd95(reference, prediction, (2.0, 1.0, 1.0)) == 0.0


def test_identical_volumes_give_dice_one_and_hd95_zero():
    rng = np.random.default_rng(0)
    mask = rng.random((10, 12, 9)) > 0.6
    assert dice(mask, mask.copy()) == 1.0
    assert hd95(mask, mask.copy(), (2.5, 0.8, 0.8)) == 0.0
    assert volume_difference(mask, mask, (2.5, 0.8, 0.8)) == 0.0


def test_empty_mask_convention():
    empty = np.zeros((4, 4, 4), bool)
    full = _cube((4, 4, 4), 2)
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(empty, full) == 0.0 and math.isnan(hd95(empty, full, (1, 1, 1)))
    assert dice(full, empty) == 0.0 and math.isnan(hd95(full, empty, (1, 1, 1)))
    assert math.isnan(relative_volume_difference(empty, full))
    assert relative_volume_difference(full, empty) == -1.0


def test_volumes_in_millilitres():
    mask = np.zeros((10, 10, 10), bool)
    mask[:] = True
    assert volume_ml(mask, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    small = np.zeros((4, 4, 4), bool)
    small[0, 0, :2] = True
    # prediction − reference: 2 voxels of 2·1·0.5 mm³ = 0.002 ml more
    assert volume_difference(np.zeros_like(small), small, (2.0, 1.0, 0.5)) == pytest.approx(0.002)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_evaluate_case_per_label_and_overall():
    reference = np.zeros((4, 4, 4), np.uint8)
    reference[:2, :2, :2] = 1  # 8 voxels
    prediction = np.zeros_like(reference)
    prediction[:2, :2, :1] = 1  # 4 voxels, all inside
    prediction[3, 3, 3] = 2  # lesion only predicted
    result = evaluate_case(reference, prediction, {"background": 0, "organ": 1, "lesion": 2, "cyst": 3},
                           spacing=(1.0, 1.0, 1.0))
    assert list(result["labels"]) == ["organ", "lesion", "cyst"]
    assert result["labels"]["organ"]["dice"] == pytest.approx(2 * 4 / 12)
    assert result["labels"]["lesion"]["dice"] == 0.0 and math.isnan(result["labels"]["lesion"]["hd95"])
    assert result["labels"]["cyst"]["dice"] == 1.0 and result["labels"]["cyst"]["hd95"] == 0.0
    assert result["labels"]["organ"]["volume_difference_ml"] == pytest.approx(-0.004)
    assert result["labels"]["organ"]["relative_volume_difference"] == pytest.approx(-0.5)
    assert result["mean_dice"] == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_summarize_known_numbers():
    result = summarize([5, 1, None, 3, 2, float("nan"), 4])
    assert result == {"mean": 3.0, "std": pytest.approx(math.sqrt(2.5)), "min": 1.0, "q1": 2.0, "median": 3.0,
                      "q3": 4.0, "max": 5.0, "n": 5, "n_nan": 2}
    assert summarize([0.7])["std"] == 0.0
    empty = summarize([float("nan")])
    assert empty["n"] == 0 and empty["n_nan"] == 1 and math.isnan(empty["mean"])


def test_paired_tests_on_identical_inputs_give_p_one_without_warnings():
    values = [0.8, 0.85, 0.9, 0.7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_tests(values, list(values))
    assert result == {"t_test_p": 1.0, "wilcoxon_p": 1.0, "n": 4, "mean_difference": 0.0}


def test_paired_tests_match_scipy_and_survive_degenerate_input():
    a = np.array([0.80, 0.82, 0.90, 0.70, 0.75, 0.88])
    b = np.array([0.78, 0.80, 0.85, 0.71, 0.70, 0.80])
    result = paired_tests(a, b)
    assert result["t_test_p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue)
    assert result["mean_difference"] == pytest.approx(np.mean(a - b)) and result["n"] == 6
    # non-finite pairs are dropped
    assert paired_tests([0.5, np.nan, 0.7], [0.4, 0.3, 0.6])["n"] == 2
    single = paired_tests([0.5], [0.4])
    assert single["n"] == 1 and math.isnan(single["t_test_p"]) and math.isnan(single["wilcoxon_p"])
    assert paired_tests([], [])["n"] == 0
    constant = paired_tests([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # constant difference: no crash
    assert constant["mean_difference"] == pytest.approx(0.1)


def test_markdown_table_and_method_table():
    table = markdown_table([{"a": 1, "b": 0.5}, {"a": "x", "b": float("nan")}], {"a": "A", "b": "B"})
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1 | 0.50 |", "| x | – |"]
    results = {
        "majority": {"c1": {"organ": 0.80, "lesion": 0.60}, "c2": {"organ": 0.90, "lesion": 0.40}},
        "vfn": {"c1": {"organ": 0.90, "lesion": 0.70}, "c2": {"organ": 0.90, "lesion": 0.50}},
    }
    text = method_table(results)
    assert "### organ (DSC, %)" in text and "### lesion (DSC, %)" in text and "### overall (DSC, %)" in text
    overall = text.split("### overall")[1]
    # majority's case means are 70 and 65: mean 67.5, std 3.54
    assert "| majority | 67.50 ± 3.54 | 65.00 | 66.25 | 67.50 | 68.75 | 70.00 | 2 |" in overall
    assert "| vfn | 75.00 ± 7.07 | 70.00 |" in overall  # case means 80 and 70


def _full_volume_surface_distances(reference, prediction, spacing):
    """The uncropped computation, as it was before cropping to the union bounding box."""
    from scipy import ndimage

    from vfnet.measures.metrics import surface

    ref_surface, pred_surface = surface(reference), surface(prediction)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    return to_pred[ref_surface], to_ref[pred_surface]


@pytest.mark.parametrize("seed", range(6))
def test_hd95_on_the_union_box_equals_the_full_volume(seed):
    from vfnet.measures.metrics import surface_distances

    rng = np.random.default_rng(seed)
    shape = (30, 40, 36)
    reference, prediction = np.zeros(shape, bool), np.zeros(shape, bool)
    for mask in (reference, prediction):
        for _ in range(rng.integers(1, 4)):  # a few random blobs, some touching the array border
            corner = rng.integers(0, np.array(shape) - 3)
            size = rng.integers(2, 12, size=3)
            mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
        mask &= rng.random(shape) > 0.1  # ragged surfaces and holes
    spacing = (2.5, 0.8, 0.7)
    cropped = surface_distances(reference, prediction, spacing)
    full = _full_volume_surface_distances(reference, prediction, spacing)
    for a, b in zip(cropped, full):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
    expected = float(np.percentile(np.concatenate(full), 95))
    assert hd95(reference, prediction, spacing) == expected
