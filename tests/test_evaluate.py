"""vfnet_evaluate on tiny folders of label files written with SimpleITK."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from vfnet.errors import VfnetError
from vfnet.evaluation.evaluate import evaluate_folders
from vfnet_cli.evaluate import evaluate_entry

SPACING_XYZ = (0.8, 1.0, 2.5)  # SimpleITK order; arrays are (z, y, x)


def _write(array: np.ndarray, path: Path, spacing=SPACING_XYZ) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 4.0, 7.0))
    sitk.WriteImage(image, str(path))
    return path


def _reference() -> np.ndarray:
    label = np.zeros((6, 10, 10), np.uint8)
    label[1:5, 2:6, 2:6] = 1  # organ: 4·4·4 = 64 voxels
    label[2:4, 3:5, 3:5] = 2  # lesion inside it
    return label


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """Three reference cases; predictions: exact, organ shifted one voxel in x, lesion missed."""
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    reference = _reference()
    for case in ("c0", "c1", "c2"):
        _write(reference, ref / f"{case}.nii.gz")
    _write(reference, pred / "c0.nii.gz")
    shifted = np.roll(reference, 1, axis=2)
    _write(shifted, pred / "c1.nrrd")  # another format pairs by case name
    missed = reference.copy()
    missed[missed == 2] = 1
    _write(missed, pred / "c2.nii.gz")
    return ref, pred


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_cli_writes_summaries_with_the_right_dice(folders):
    ref, pred = folders
    before = sorted(p.name for p in ref.iterdir())
    result = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "-q", "-np", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ref.iterdir()) == before  # nothing written into the references
    summary = _strict_json(pred / "summary.json")
    assert summary["labels"] == {"label_1": 1, "label_2": 2}
    cases = summary["cases"]
    assert cases["c0"]["mean_dice"] == 1.0 and cases["c0"]["labels"]["label_1"]["hd95"] == 0.0
    # c1: organ (64 − 8 lesion voxels, a ring) and lesion both shifted by one voxel (0.8 mm) in x
    organ = _reference() == 1
    expected = 2 * np.sum(organ & np.roll(organ, 1, axis=2)) / (2 * organ.sum())
    assert cases["c1"]["labels"]["label_1"]["dice"] == pytest.approx(expected)
    assert cases["c1"]["labels"]["label_2"]["dice"] == pytest.approx(0.5)  # 2·2·2 cube, half overlaps
    assert cases["c1"]["labels"]["label_2"]["hd95"] == pytest.approx(0.8)
    # c2: lesion predicted as organ: lesion Dice 0 with prediction empty → HD95 undefined (null)
    assert cases["c2"]["labels"]["label_2"]["dice"] == 0.0 and cases["c2"]["labels"]["label_2"]["hd95"] is None
    assert cases["c2"]["labels"]["label_1"]["dice"] == pytest.approx(2 * 56 / (56 + 64))
    # volume difference in ml with 0.8 · 1 · 2.5 mm³ voxels: 8 lesion voxels more organ
    assert cases["c2"]["labels"]["label_1"]["volume_difference_ml"] == pytest.approx(8 * 2.0 / 1000)
    lesion = summary["summary"]["label_2"]
    assert lesion["dice"]["mean"] == pytest.approx(0.5) and lesion["dice"]["n"] == 3
    assert lesion["hd95"]["n"] == 2 and lesion["hd95"]["n_nan"] == 1
    overall = [cases[c]["mean_dice"] for c in ("c0", "c1", "c2")]
    assert summary["summary"]["overall"]["dice"]["median"] == pytest.approx(np.median(overall))
    markdown = (pred / "summary.md").read_text()
    assert "Mean ± std" in markdown and "Q1" in markdown and "### label_2 (DSC, %)" in markdown
    assert "undefined" in markdown  # the convention is stated
    assert (pred / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "label_1" in result.output and "wrote" in result.output
    assert not list(pred.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_compare_reports_paired_p_values(folders, tmp_path):
    ref, pred = folders
    other = tmp_path / "other"
    for case in ("c0", "c1", "c2"):
        _write(np.roll(_reference(), 2, axis=1), other / f"{case}.nii.gz")
    out = tmp_path / "report"
    result = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "--compare", str(other),
                                                 "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = _strict_json(out / "summary.json")
    assert summary["compare"]["name"] == "other"
    tests = summary["paired_tests"]
    assert set(tests) == {"label_1", "label_2", "overall"}
    for test in tests.values():
        assert test["n"] == 3 and 0.0 <= test["t_test_p"] <= 1.0 and 0.0 <= test["wilcoxon_p"] <= 1.0
    first = [summary["cases"][c]["mean_dice"] for c in ("c0", "c1", "c2")]
    second = [summary["compare"]["cases"][c]["mean_dice"] for c in ("c0", "c1", "c2")]
    assert tests["overall"]["mean_difference"] == pytest.approx(np.mean(np.subtract(first, second)))
    assert "Wilcoxon" in (out / "summary.md").read_text() and "Wilcoxon p" in result.output
    assert not (pred / "summary.json").exists()  # -o was honoured


def test_compare_with_identical_predictions_gives_p_one(folders, tmp_path):
    ref, pred = folders
    summary = evaluate_folders(ref, pred, compare_dir=pred, output_dir=tmp_path / "out", quiet=True)
    assert all(t["t_test_p"] == 1.0 and t["wilcoxon_p"] == 1.0 for t in summary["paired_tests"].values())


def test_missing_prediction_is_reported_and_fails_unless_allowed(folders):
    ref, pred = folders
    (pred / "c2.nii.gz").unlink()
    _write(_reference(), pred / "stray.nii.gz")
    strict = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "-q"])
    assert strict.exit_code == 1 and "1 prediction(s) missing" in strict.output and "--allow-missing" in strict.output
    result = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "-q", "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert "missing predictions: c2" in result.output
    summary = _strict_json(pred / "summary.json")
    assert summary["missing"] == ["c2"] and summary["cases"]["c2"]["missing"]
    assert summary["cases"]["c2"]["mean_dice"] == 0.0
    assert summary["cases"]["c2"]["labels"]["label_1"]["dice"] == 0.0
    assert summary["summary"]["overall"]["dice"]["n"] == 3  # missing cases count, with Dice 0
    assert summary["extra_predictions"] == [str(pred / "stray.nii.gz")]
    assert "c2 (missing)" in (pred / "summary.md").read_text()


def test_size_mismatch_fails_that_case_by_name_and_the_rest_go_on(folders):
    ref, pred = folders
    _write(np.zeros((6, 10, 12), np.uint8), pred / "c0.nii.gz")
    result = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "-q"])
    assert result.exit_code == 1
    assert "FAILED c0" in result.output
    assert str(pred / "c0.nii.gz") in result.output and str(ref / "c0.nii.gz") in result.output
    assert "Traceback" not in result.output
    summary = _strict_json(pred / "summary.json")
    assert summary["cases"]["c0"]["mean_dice"] == 0.0 and summary["cases"]["c1"]["mean_dice"] > 0.5
    assert "c0" in summary["failed"]


def test_empty_masks_follow_the_convention(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    empty = np.zeros((4, 5, 6), np.uint8)
    some = empty.copy()
    some[1, 1:3, 1:3] = 1
    _write(empty, ref / "both_empty.nii.gz")
    _write(empty, pred / "both_empty.nii.gz")
    _write(empty, ref / "ref_empty.nii.gz")
    _write(some, pred / "ref_empty.nii.gz")
    _write(some, ref / "pred_empty.nii.gz")
    _write(empty, pred / "pred_empty.nii.gz")
    summary = evaluate_folders(ref, pred, labels={"background": 0, "organ": 1}, quiet=True)
    cases = summary["cases"]
    assert cases["both_empty"]["labels"]["organ"]["dice"] == 1.0
    assert cases["both_empty"]["labels"]["organ"]["hd95"] == 0.0
    for case in ("ref_empty", "pred_empty"):
        assert cases[case]["labels"]["organ"]["dice"] == 0.0
        assert math.isnan(cases[case]["labels"]["organ"]["hd95"])
    assert summary["summary"]["organ"]["hd95"] == pytest.approx(
        {"mean": 0.0, "std": 0.0, "min": 0.0, "q1": 0.0, "median": 0.0, "q3": 0.0, "max": 0.0, "n": 1, "n_nan": 2})
    assert _strict_json(pred / "summary.json")["cases"]["ref_empty"]["labels"]["organ"]["hd95"] is None


def test_labels_from_dataset_json(vfnet_env, folders):
    ref, pred = folders
    task = vfnet_env / "vfnet_raw" / "Task05_Test"
    task.mkdir()
    (task / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 3}))
    result = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "-d", "5", "-q"])
    assert result.exit_code == 0, result.output
    summary = _strict_json(pred / "summary.json")
    assert summary["labels"] == {"organ": 1}
    assert any("[2]" in w for w in summary["cases"]["c0"]["warnings"])  # value 2 is not a declared label
    result = CliRunner().invoke(evaluate_entry, ["-r", str(ref), "-p", str(pred), "-d", "7", "-q"])
    assert result.exit_code == 2 and "Task05_Test" in result.output


def test_never_writes_into_the_reference_folder(folders):
    ref, pred = folders
    with pytest.raises(VfnetError, match="reference"):
        evaluate_folders(ref, pred, output_dir=ref / "eval", quiet=True)
    assert not (ref / "eval").exists()


def test_parallel_gives_the_same_result(folders, tmp_path):
    ref, pred = folders
    _write(_reference(), ref / "c3.nii.gz")
    _write(_reference(), pred / "c3.nii.gz")
    serial = evaluate_folders(ref, pred, output_dir=tmp_path / "a", quiet=True)
    parallel = evaluate_folders(ref, pred, output_dir=tmp_path / "b", num_processes=2, quiet=True)
    assert _strict_json(tmp_path / "a" / "summary.json")["cases"] == _strict_json(tmp_path / "b" / "summary.json")[
        "cases"]
    assert serial["summary"]["overall"]["dice"]["mean"] == parallel["summary"]["overall"]["dice"]["mean"]
