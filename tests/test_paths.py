"""Folder variables and dataset-name resolution."""

from __future__ import annotations

import pytest

from vfnet import paths
from vfnet.errors import DatasetNotFoundError


def _make(root, *names):
    for name in names:
        (root / name).mkdir(parents=True)


def test_id_short_and_full_names_resolve_to_the_same_dataset(tmp_path):
    _make(tmp_path, "Task04_Hippocampus", "Task104_Other")
    for query in (4, "4", "04", "Task04", "Task04_Hippocampus", "hippocampus"):
        assert paths.resolve_dataset(query, tmp_path) == "Task04_Hippocampus"
    assert paths.resolve_dataset("104", tmp_path) == "Task104_Other"


def test_nnunet_v2_dataset_names_resolve_both_ways(tmp_path):
    _make(tmp_path, "Task099_DemoOrgans", "Dataset097_Foo")
    for query in (99, "Dataset099", "Dataset099_DemoOrgans", "Task099_DemoOrgans"):
        assert paths.resolve_dataset(query, tmp_path) == "Task099_DemoOrgans"
    for query in (97, "Task097", "Dataset097_Foo", "foo"):
        assert paths.resolve_dataset(query, tmp_path) == "Dataset097_Foo"
    _make(tmp_path, "Task097_Foo")
    with pytest.raises(DatasetNotFoundError, match="ambiguous.*Dataset097_Foo, Task097_Foo"):
        paths.resolve_dataset(97, tmp_path)


def test_omitted_dataset_needs_exactly_one(tmp_path):
    _make(tmp_path, "Task04_Hippocampus")
    assert paths.resolve_dataset(None, tmp_path) == "Task04_Hippocampus"
    _make(tmp_path, "Task05_Prostate")
    with pytest.raises(DatasetNotFoundError, match="Task04_Hippocampus, Task05_Prostate"):
        paths.resolve_dataset(None, tmp_path)


def test_unknown_and_ambiguous_names_list_what_exists(tmp_path):
    _make(tmp_path, "Task04_Hippocampus", "Task004_Copy")
    with pytest.raises(DatasetNotFoundError, match="not found.*Task004_Copy, Task04_Hippocampus"):
        paths.resolve_dataset("Task07", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="ambiguous"):
        paths.resolve_dataset(4, tmp_path)


def test_default_folders_when_variables_unset(monkeypatch, tmp_path, caplog):
    for var in paths.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "_notice_given", False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # the current directory does not matter
    with caplog.at_level("WARNING", logger="vfnet.paths"):
        assert paths.raw_root() == tmp_path / "home" / "vfnet_data" / "raw"
        assert paths.results_root() == tmp_path / "home" / "vfnet_data" / "results"
    notices = [r.getMessage() for r in caplog.records if "not set" in r.getMessage()]
    assert len(notices) == 1 and str(tmp_path / "home" / "vfnet_data") in notices[0]


def test_variables_win(monkeypatch, tmp_path):
    monkeypatch.setenv("vfnet_preprocessed", str(tmp_path))
    assert paths.preprocessed_root() == tmp_path


def test_unit_paths_name_every_file_of_a_unit(tmp_path):
    unit = paths.UnitPaths.of(tmp_path / "Task04_Hippocampus", "quick", paths.view_network("axial"), "cca_0_1")
    assert unit.folder == tmp_path / "Task04_Hippocampus" / "quick" / "2d_axial" / "cca_0_1"
    assert paths.unit_dir(tmp_path / "Task04_Hippocampus", "quick", "2d_axial", "cca_0_1") == unit.folder
    assert unit.prediction("hippocampus_001") == unit.folder / "predictions" / "hippocampus_001.npz"
    assert {unit.final_checkpoint.name, unit.best_checkpoint.name, unit.latest_checkpoint.name} == {
        paths.FINAL_CHECKPOINT, paths.BEST_CHECKPOINT, paths.LATEST_CHECKPOINT}
    assert not unit.finished
    unit.folder.mkdir(parents=True)
    unit.final_checkpoint.write_bytes(b"x")
    assert not unit.finished  # a final checkpoint without its summary is not a trained unit
    unit.summary.write_text("{}")
    assert unit.finished
