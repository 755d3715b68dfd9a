"""LPS reorientation and its exact undoing, on real CT and DICOM and on odd synthetic geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from vfnet.imageio import from_canonical, read_canonical, read_image
from vfnet.inference.inputs import discover_cases


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-12)


def test_canonical_axes_are_inferior_superior_anterior_posterior_right_left(tmp_path):
    # stored RAS (flip of x and y relative to LPS), axes permuted (x stored as slices)
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    image = sitk.GetImageFromArray(array)
    image.SetDirection([0, 0, 1, -1, 0, 0, 0, -1, 0])
    image.SetSpacing([1.0, 2.0, 3.0])
    path = tmp_path / "odd.nii.gz"
    sitk.WriteImage(image, str(path))
    canonical, spacing, geometry = read_canonical(path)
    oriented = sitk.DICOMOrient(read_image(path), "LPS")
    assert oriented.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert spacing == (oriented.GetSpacing()[2], oriented.GetSpacing()[1], oriented.GetSpacing()[0])
    back = from_canonical(canonical, geometry)
    _assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)


@pytest.mark.realdata
def test_round_trip_real_ct(shared_data):
    path = shared_data / "ct_example" / "abdomen_ct_3mm.nii.gz"
    original = read_image(path)
    canonical, _, geometry = read_canonical(path)
    assert canonical.shape == tuple(reversed(sitk.DICOMOrient(original, "LPS").GetSize()))
    back = from_canonical(canonical, geometry)
    _assert_same_geometry(back, original)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original))


@pytest.mark.realdata
def test_round_trip_dicom_series_read_by_position(shared_data):
    folder = shared_data / "ct_example" / "dicom"
    image = read_image(folder)
    assert image.GetSize() == (512, 512, 20)
    # slices 2 mm apart by position, although the header's SliceThickness says 3 mm
    assert image.GetSpacing()[2] == pytest.approx(2.0, abs=1e-3)
    canonical, _, geometry = read_canonical(folder)
    back = from_canonical(canonical, geometry)
    _assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_discover_cases_groups_channels_singles_and_dicom(tmp_path):
    blank = sitk.Image([4, 4, 4], sitk.sitkInt16)
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b.nrrd", "scan_2024.mha"):
        sitk.WriteImage(blank, str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("ignored")
    cases = {c.case_id: c for c in discover_cases(tmp_path)}
    assert set(cases) == {"a", "b", "scan_2024"}
    assert [p.name for p in cases["a"].sources] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert cases["b"].output_name == "b.nii.gz"


@pytest.mark.realdata
def test_discover_dicom_folder(shared_data, tmp_path):
    cases = discover_cases(shared_data / "ct_example")
    names = {c.case_id for c in cases}
    assert {"dicom", "abdomen_ct_3mm", "abdomen_ct_3mm_labels"} == names


def test_a_write_that_leaves_an_empty_file_is_refused_and_nothing_takes_the_name(tmp_path, monkeypatch):
    from vfnet import imageio
    from vfnet.errors import ImageWriteError

    image = sitk.GetImageFromArray(np.ones((3, 4, 5), np.uint8))
    good = tmp_path / "good.nii.gz"
    imageio.write_image(image, good)
    assert imageio.written_image_problem(good, image.GetSize()) is None

    def full_disk(img, name, compress):  # what ITK does on a full disk: an empty file, no error
        open(name, "wb").close()

    monkeypatch.setattr(imageio.sitk, "WriteImage", full_disk)
    target = tmp_path / "case.nii.gz"
    with pytest.raises(ImageWriteError, match="could not write .*case.nii.gz: the file is empty"):
        imageio.write_image(image, target)
    assert not target.exists() and list(tmp_path.iterdir()) == [good]
    # a truncated file is not complete either
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:20])
    assert imageio.written_image_problem(truncated) == "the file cannot be read back"
