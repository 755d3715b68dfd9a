"""The integrity check: every kind of problem, all reported at once, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from vfnet import paths
from vfnet.errors import DatasetIntegrityError
from vfnet.integrity import verify_dataset
from vfnet_cli.plan import plan_and_preprocess_entry


def _problems(folder) -> list[str]:
    with pytest.raises(DatasetIntegrityError) as info:
        verify_dataset(folder, num_processes=1, quiet=True)
    return info.value.problems


def _edit(path, func):
    image = sitk.ReadImage(str(path))
    out = func(image)
    sitk.WriteImage(out, str(path))


def test_clean_dataset_passes(demo_raw):
    info, reports = verify_dataset(demo_raw, num_processes=1, quiet=True)
    assert len(reports) == 8 and all(not r.problems for r in reports)
    assert info.num_classes == 3


def test_image_without_label_and_label_without_image(demo_raw):
    (demo_raw / "labelsTr" / "demo_000.nii.gz").unlink()
    (demo_raw / "imagesTr" / "demo_001_0000.nii.gz").unlink()
    problems = _problems(demo_raw)
    assert any("demo_000" in p and "image without label" in p for p in problems)
    assert any("demo_001" in p and "label without image" in p for p in problems)


def test_shape_mismatch(demo_raw):
    label = demo_raw / "labelsTr" / "demo_002.nii.gz"
    _edit(label, lambda im: im[:, :, :-1])
    problems = _problems(demo_raw)
    assert len(problems) == 1 and "demo_002" in problems[0] and "shape" in problems[0]


@pytest.mark.parametrize("what", ["spacing", "origin", "direction"])
def test_geometry_mismatch(demo_raw, what):
    image = demo_raw / "imagesTr" / "demo_003_0000.nii.gz"

    def change(im):
        if what == "spacing":
            im.SetSpacing([s * 1.1 for s in im.GetSpacing()])
        elif what == "origin":
            im.SetOrigin([o + 0.5 for o in im.GetOrigin()])
        else:
            im.SetDirection([0, 1, 0, 1, 0, 0, 0, 0, 1])
        return im

    _edit(image, change)
    problems = _problems(demo_raw)
    assert len(problems) == 1 and "demo_003_0000" in problems[0] and what in problems[0]


def test_small_geometry_differences_are_tolerated(demo_raw):
    image = demo_raw / "imagesTr" / "demo_003_0000.nii.gz"

    def nudge(im):
        im.SetOrigin([o + 1e-4 for o in im.GetOrigin()])
        im.SetSpacing([s * (1 + 1e-5) for s in im.GetSpacing()])
        return im

    _edit(image, nudge)
    verify_dataset(demo_raw, num_processes=1, quiet=True)


def test_undeclared_and_non_integer_labels(demo_raw):
    def undeclared(im):
        array = sitk.GetArrayFromImage(im)
        array[0, 0, 0] = 7
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(im)
        return out

    def fractional(im):
        array = sitk.GetArrayFromImage(im).astype(np.float32)
        array[0, 0, 0] = 0.5
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(im)
        return out

    _edit(demo_raw / "labelsTr" / "demo_004.nii.gz", undeclared)
    _edit(demo_raw / "labelsTr" / "demo_005.nii.gz", fractional)
    problems = _problems(demo_raw)
    assert any("demo_004" in p and "[7]" in p and "not declared" in p for p in problems)
    assert any("demo_005" in p and "integers" in p for p in problems)


def test_float_labels_with_integer_values_pass(demo_raw):
    _edit(demo_raw / "labelsTr" / "demo_004.nii.gz", lambda im: sitk.Cast(im, sitk.sitkFloat32))
    verify_dataset(demo_raw, num_processes=1, quiet=True)


def test_nan_and_inf_in_image(demo_raw):
    def poison(im):
        array = sitk.GetArrayFromImage(im)
        array[1, 1, 1] = np.nan
        array[2, 2, 2] = np.inf
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(im)
        return out

    _edit(demo_raw / "imagesTr" / "demo_006_0000.nii.gz", poison)
    problems = _problems(demo_raw)
    assert len(problems) == 1 and "demo_006_0000" in problems[0] and "2 voxels are NaN or Inf" in problems[0]


def test_corrupt_and_truncated_files(demo_raw):
    # ITK reads a truncated .nii.gz without complaint; the check must not
    truncated = demo_raw / "imagesTr" / "demo_007_0000.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-300])
    garbage = demo_raw / "labelsTr" / "demo_006.nii.gz"
    garbage.write_bytes(b"this is not an image" * 10)
    problems = _problems(demo_raw)
    assert len(problems) == 2
    assert any("demo_007_0000" in p and "truncated" in p for p in problems)
    assert any("demo_006.nii.gz" in p and ("corrupt" in p or "cannot be read" in p) for p in problems)


def test_wrong_number_of_channels(demo_raw):
    shutil.copyfile(demo_raw / "imagesTr" / "demo_000_0000.nii.gz", demo_raw / "imagesTr" / "demo_000_0001.nii.gz")
    four_d = sitk.JoinSeries([sitk.ReadImage(str(demo_raw / "imagesTr" / "demo_001_0000.nii.gz"))] * 2)
    sitk.WriteImage(four_d, str(demo_raw / "imagesTr" / "demo_001_0000.nii.gz"))
    problems = _problems(demo_raw)
    assert any("demo_000" in p and "2 channel file(s)" in p and "declares 1" in p for p in problems)
    assert any("demo_001_0000" in p and "4D" in p for p in problems)


def test_empty_dataset(demo_raw):
    for sub in ("imagesTr", "labelsTr"):
        shutil.rmtree(demo_raw / sub)
    problems = _problems(demo_raw)
    assert any("empty dataset" in p for p in problems)


@pytest.mark.parametrize("content, expected", [
    (None, "dataset.json: missing"),
    ("{not json", "invalid JSON"),
    (json.dumps({"labels": {"background": 0}}), "channel_names"),
    (json.dumps({"channel_names": {"0": "CT"}}), "'labels'"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": "eight"}),
     "'numTraining' must be a whole number, got 'eight'"),
    (b'{"name": "caf\xe9"}', "not UTF-8 text"),
])
def test_dataset_json_problems(demo_raw, content, expected):
    path = demo_raw / "dataset.json"
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    problems = _problems(demo_raw)
    assert len(problems) == 1 and expected in problems[0]


def test_every_problem_reported_at_once_and_nothing_written(demo_raw):
    (demo_raw / "labelsTr" / "demo_000.nii.gz").unlink()
    _edit(demo_raw / "labelsTr" / "demo_002.nii.gz", lambda im: im[:, :-2, :])
    result = CliRunner().invoke(plan_and_preprocess_entry, ["-d", "99", "-q"])
    assert result.exit_code == 2
    assert "demo_000" in result.output and "demo_002" in result.output
    assert "Traceback" not in result.output
    assert not (paths.preprocessed_root() / demo_raw.name).exists()


def test_verify_only_writes_nothing(demo_raw):
    result = CliRunner().invoke(plan_and_preprocess_entry, ["--verify", "-q"])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    assert not (paths.preprocessed_root() / demo_raw.name).exists()


def test_one_case_reports_geometry_undeclared_labels_and_nan_labels_together(demo_raw):
    # a spacing mismatch used to stop the case's checks, hiding its label problems
    image = demo_raw / "imagesTr" / "demo_004_0000.nii.gz"
    _edit(image, lambda im: (im.SetSpacing([s * 1.1 for s in im.GetSpacing()]), im)[1])
    label_path = demo_raw / "labelsTr" / "demo_004.nii.gz"
    label = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(label).astype(np.float32)
    array[0, 0, :3] = np.nan
    array[0, 1, 0] = 9
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(label)
    sitk.WriteImage(out, str(label_path))
    problems = [p for p in _problems(demo_raw) if "demo_004" in p]
    assert any("spacing" in p for p in problems)
    assert any("label values [9] are not declared" in p for p in problems)
    assert any("3 voxels are NaN or Inf" in p and "demo_004.nii.gz" in p for p in problems)
    assert len(problems) == 3
