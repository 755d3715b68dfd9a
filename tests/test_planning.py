"""Fingerprint, plan, splits and preprocessing on the tiny synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.errors import PlanError
from vfnet.experiment_planning.plans import Plan, make_splits, make_units
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess
from vfnet.views import VIEWS


def test_plan_names_views_vfn_units_and_presets(demo_preprocessed):
    plan = Plan.load(demo_preprocessed)
    assert set(plan["views"]) == set(VIEWS)
    for view in VIEWS:
        spec = plan["views"][view]
        assert spec["context_slices"] == 3 and spec["in_channels"] == 3
        assert all(p % 2 ** spec["num_poolings"] == 0 for p in spec["patch_size"])
    # 16 x 24 x 20 volumes at 2 x 1 x 1 mm: the VFN patch is capped to the data
    assert plan["vfn"]["patch_size"] == [16, 24, 24]
    assert plan["split_mode"] == "cca" and plan["num_folds"] == 4
    names = [u["name"] for u in plan.units("2d")]
    assert names == ["0", "1", "2", "3", "cca_0_1", "cca_0_2", "cca_0_3", "cca_1_2", "cca_1_3", "cca_2_3", "all"]
    assert [u["name"] for u in plan.units("vfn")] == ["0", "1", "2", "3", "all"]
    assert set(plan["presets"]) == {"quick", "default", "paper"}
    assert plan["presets"]["paper"]["vfn"]["iterations"] == 30000


def test_cca_units_leave_out_and_predict_both_folds():
    units = make_units(["0", "1", "2", "3"], "cca")["2d"]
    cca = [u for u in units if u["kind"] == "cca"]
    assert len(cca) == 6
    for unit in cca:
        assert len(unit["predict_folds"]) == 2
        assert not set(unit["predict_folds"]) & set(unit["train_folds"])
        assert sorted(unit["train_folds"] + unit["predict_folds"]) == ["0", "1", "2", "3"]


def test_splits_are_seeded_stable_and_disjoint():
    cases = [f"c{i:03d}" for i in range(23)]
    first = make_splits(cases, 4, "cca")
    assert first == make_splits(list(reversed(cases)), 4, "cca")
    folds = list(first["folds"].values())
    assert sorted(c for fold in folds for c in fold) == cases and max(map(len, folds)) - min(map(len, folds)) <= 1
    holdout = make_splits(cases, 4, "holdout")["folds"]
    assert set(holdout) == {"A", "B", "C"} and sorted(c for fold in holdout.values() for c in fold) == cases


def test_cca_needs_three_folds(demo_raw):
    with pytest.raises(PlanError, match="at least 3 folds"):
        plan_and_preprocess(None, num_processes=1, num_folds=2, quiet=True)


def test_fingerprint_contents(demo_preprocessed):
    fp = read_json(demo_preprocessed / "fingerprint.json")
    assert fp["num_cases"] == 8
    assert fp["median_spacing"] == [2.0, 1.0, 1.0]  # (z, y, x) after LPS reorientation
    stats = fp["foreground_intensity"]["0"]
    for key in ("mean", "std", "min", "max", "percentile_00_5", "percentile_99_5"):
        assert key in stats
    assert stats["min"] <= stats["percentile_00_5"] <= stats["mean"] <= stats["percentile_99_5"] <= stats["max"]
    assert fp["label_voxel_counts"]["organ"]["cases_present"] == 8
    assert len(fp["foreground_bbox_sizes"]) == 8


def test_preprocessed_arrays_are_canonical_normalized_and_memory_mappable(demo_preprocessed):
    data = PreprocessedDataset(demo_preprocessed)
    case = data.all_cases[0]
    image, label = data.load(case)
    assert isinstance(image, np.memmap)
    assert image.shape == (1, 16, 24, 20) and label.shape == (16, 24, 20)
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2
    assert set(np.unique(label)) <= {0, 1, 2}
    props = data.properties(case)
    assert props["geometry"]["size"] == [20, 24, 16]


def test_rerun_skips_finished_cases_and_changed_plan_redoes_them(demo_preprocessed, monkeypatch):
    again = plan_and_preprocess(None, num_processes=1, quiet=True)["_run"]
    assert again["preprocessed"] == 0 and again["skipped"] == 8
    import vfnet.experiment_planning.plans

    original = vfnet.experiment_planning.plans.plan_normalization

    def ct_like(info, fingerprint):
        schemes = original(info, fingerprint)
        return {k: {"scheme": "ct", "clip": [0.0, 300.0], "mean": 100.0, "std": 50.0} for k in schemes}

    monkeypatch.setattr(vfnet.experiment_planning.plans, "plan_normalization", ct_like)
    redone = plan_and_preprocess(None, num_processes=1, quiet=True)["_run"]
    assert redone["preprocessed"] == 8


def test_splits_identical_on_every_run(demo_preprocessed):
    before = (demo_preprocessed / "splits.json").read_text()
    plan_and_preprocess(None, num_processes=1, quiet=True)
    assert (demo_preprocessed / "splits.json").read_text() == before
    assert json.loads(before)["mode"] == "cca"


def test_holdout_plan(demo_raw):
    plan = plan_and_preprocess(None, num_processes=1, split_mode="holdout", quiet=True)
    assert plan["split_mode"] == "holdout" and plan["fold_names"] == ["A", "B", "C"]
    assert [u["name"] for u in plan["units"]["vfn"]] == ["holdout"]
    folder = paths.preprocessed_root() / demo_raw.name
    assert len(read_json(folder / "splits.json")["folds"]["C"]) >= 1


def test_an_edited_raw_label_redoes_its_arrays(demo_preprocessed, demo_raw):
    import os

    import SimpleITK as sitk

    case = min(p.name for p in (demo_raw / "labelsTr").iterdir())
    case_id = case.split(".")[0]
    before = np.load(demo_preprocessed / "arrays" / f"{case_id}_label.npy")
    props = read_json(demo_preprocessed / "arrays" / f"{case_id}.json")
    assert props["sources"][f"labelsTr/{case}"]["bytes"] == (demo_raw / "labelsTr" / case).stat().st_size
    label_path = demo_raw / "labelsTr" / case
    label = sitk.ReadImage(str(label_path))
    edited = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(label)))
    edited.CopyInformation(label)
    sitk.WriteImage(edited, str(label_path))
    os.utime(label_path, ns=(label_path.stat().st_atime_ns, label_path.stat().st_mtime_ns + 10**9))

    plan = plan_and_preprocess(None, num_processes=1, quiet=True)
    after = np.load(demo_preprocessed / "arrays" / f"{case_id}_label.npy")
    assert before.any() and not after.any()
    assert plan["_run"]["preprocessed"] >= 1
    fingerprint = demo_preprocessed / "fingerprint.json"
    arrays = demo_preprocessed / "arrays" / f"{case_id}_label.npy"
    assert fingerprint.stat().st_mtime_ns >= arrays.stat().st_mtime_ns  # written after the arrays it describes
    again = plan_and_preprocess(None, num_processes=1, quiet=True)
    assert again["_run"]["preprocessed"] == 0
