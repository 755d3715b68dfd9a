"""MSD conversion and organ-by-name extraction, on the shared real data and synthetic 4D input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from dataset_conversion.msd import convert_msd
from vfnet import paths
from vfnet.dataset import load_dataset_json, training_cases
from vfnet_cli.convert import extract_organs_entry
from vfnet_cli.plan import plan_and_preprocess_entry


@pytest.mark.realdata
def test_convert_shared_hippocampus(shared_data, vfnet_env):
    target = convert_msd(shared_data / "Task04_Hippocampus", quiet=True)
    assert target.name == "Task04_Hippocampus"
    info = load_dataset_json(target)
    assert info.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert info.channel_names == {0: "MRI"} and info.num_training == 200
    written = json.loads((target / "dataset.json").read_text())
    assert set(written) >= {"channel_names", "labels", "numTraining", "file_ending"}
    assert len(training_cases(target, info)) == 200
    assert (target / "imagesTr" / "hippocampus_001_0000.nii.gz").is_file()
    assert not (target / "imagesTs").exists()


@pytest.mark.realdata
def test_broken_copy_of_hippocampus_names_both_cases(shared_data, vfnet_env):
    """The issue's check: an image lacking its label and a label of the wrong shape."""
    target = convert_msd(shared_data / "Task04_Hippocampus", quiet=True)
    (target / "labelsTr" / "hippocampus_001.nii.gz").unlink()
    label_path = target / "labelsTr" / "hippocampus_003.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(label_path))[:, :-3, :], str(label_path))
    result = CliRunner().invoke(plan_and_preprocess_entry, ["-d", "Task04", "-q"])
    assert result.exit_code == 2
    assert "hippocampus_001" in result.output and "image without label" in result.output
    assert "hippocampus_003" in result.output and "shape" in result.output
    assert "Traceback" not in result.output
    assert not (paths.preprocessed_root() / "Task04_Hippocampus").exists()


def test_convert_4d_msd_splits_channels_and_keeps_test_images(tmp_path, vfnet_env):
    source = tmp_path / "Task05_TwoChannel"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (source / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in ("a_001", "a_002"):
        channels = [sitk.GetImageFromArray(rng.normal(size=(6, 7, 8)).astype(np.float32)) for _ in range(2)]
        sitk.WriteImage(sitk.JoinSeries(channels), str(source / "imagesTr" / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.JoinSeries(channels), str(source / "imagesTs" / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 7, 8), np.uint8)), str(source / "labelsTr" / f"{case}.nii.gz"))
    (source / "dataset.json").write_text(json.dumps({
        "name": "TwoChannel", "modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "gland"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ("a_001", "a_002")],
    }))
    target = convert_msd(source, task_id=105, quiet=True)
    assert target.name == "Task105_TwoChannel"
    for case in ("a_001", "a_002"):
        for channel in (0, 1):
            image = sitk.ReadImage(str(target / "imagesTr" / f"{case}_{channel:04d}.nii.gz"))
            assert image.GetDimension() == 3 and image.GetSize() == (8, 7, 6)
        assert (target / "imagesTs" / f"{case}_0001.nii.gz").is_file()
    assert load_dataset_json(target).channel_names == {0: "T2", 1: "ADC"}


@pytest.mark.realdata
def test_extract_organs_from_real_ct(shared_data, vfnet_env):
    ct = shared_data / "ct_example"
    result = CliRunner().invoke(extract_organs_entry, [
        "-i", str(ct / "abdomen_ct_3mm.nii.gz"), "-l", str(ct / "abdomen_ct_3mm_labels.nii.gz"),
        "--labels-json", str(ct / "abdomen_ct_3mm_labels.json"),
        "--organs", "pancreas", "adrenal_gland_left+adrenal_gland_right", "-o", "Task10_PancreasAdrenal"])
    assert result.exit_code == 0, result.output
    target = paths.raw_root() / "Task10_PancreasAdrenal"
    info = load_dataset_json(target)
    assert info.labels == {"background": 0, "pancreas": 1, "adrenal_gland_left+adrenal_gland_right": 2}
    assert info.channel_names == {0: "CT"}
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(ct / "abdomen_ct_3mm_labels.nii.gz")))
    names = {v: int(k) for k, v in json.loads((ct / "abdomen_ct_3mm_labels.json").read_text()).items()}
    cases = training_cases(target, info)
    assert len(cases) == 1
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[0].label)))
    assert np.count_nonzero(label == 1) == np.count_nonzero(source == names["pancreas"]) > 0
    assert np.count_nonzero(label == 2) == np.count_nonzero(
        np.isin(source, [names["adrenal_gland_left"], names["adrenal_gland_right"]])) > 0
    assert set(np.unique(label)) == {0, 1, 2}


@pytest.mark.realdata
def test_extract_unknown_organ_suggests_names(shared_data, vfnet_env):
    ct = shared_data / "ct_example"
    result = CliRunner().invoke(extract_organs_entry, [
        "-i", str(ct / "abdomen_ct_3mm.nii.gz"), "-l", str(ct / "abdomen_ct_3mm_labels.nii.gz"),
        "--labels-json", str(ct / "abdomen_ct_3mm_labels.json"), "--organs", "adrenal", "-o", "Task11_X"])
    assert result.exit_code == 2
    assert "adrenal_gland_left" in result.output and "Traceback" not in result.output
