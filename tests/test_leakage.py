"""The leakage check proves, from records, that no model behind a fold's numbers saw that fold."""

from __future__ import annotations

from click.testing import CliRunner

from vfnet import paths
from vfnet.atomic import write_json
from vfnet.experiment_planning.plans import Plan
from vfnet.fusion.fusion_set import map_sources
from vfnet.fusion.leakage import find_leaks
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.views import VIEWS
from vfnet_cli.fusion import check_leakage_entry


def _record_units(folder, preset="quick"):
    """Write unit.json records as honest training would, plus the fusion-set manifests."""
    plan, data = Plan.load(folder), PreprocessedDataset(folder)
    results = paths.results_root() / folder.name
    for unit in plan.units("2d"):
        for view in VIEWS:
            write_json(paths.unit_dir(results, preset, f"2d_{view}", unit["name"]) / "unit.json",
                       {"train_cases": data.fold_cases(unit["train_folds"])})
    for unit in plan.units("vfn"):
        write_json(paths.unit_dir(results, preset, "vfn", unit["name"]) / "unit.json",
                   {"train_cases": data.fold_cases(unit["train_folds"])})
        sources = map_sources(plan, data, unit["name"])
        write_json(folder / "fusion" / preset / unit["name"] / "manifest.json", {"cases": {
            case: {"fold": data.fold_of(case), "units": {f"2d_{v}": src for v in VIEWS}}
            for case, src in sources.items()}})
    return plan, data, results


def test_cca_sources_leave_out_the_test_fold_and_the_case_fold(demo_preprocessed):
    plan, data = Plan.load(demo_preprocessed), PreprocessedDataset(demo_preprocessed)
    sources = map_sources(plan, data, "2")
    assert set(sources) == set(data.all_cases) - set(data.fold_cases(["2"]))
    for case, unit in sources.items():
        assert unit == "cca_" + "_".join(sorted(["2", data.fold_of(case)]))
        assert set(plan.unit("2d", unit)["predict_folds"]) == {"2", data.fold_of(case)}


def test_sources_come_from_the_plans_units(demo_preprocessed):
    """Renaming a CCA unit in plans.json renames the source; removing it is one clear PlanError."""
    import copy

    import pytest

    from vfnet.errors import PlanError

    data = PreprocessedDataset(demo_preprocessed)
    raw = copy.deepcopy(Plan.load(demo_preprocessed).data)
    for unit in raw["units"]["2d"]:
        if unit["name"] == "cca_0_2":
            unit["name"] = "pair_zero_two"
    sources = map_sources(Plan(raw), data, "2")
    assert {src for case, src in sources.items() if data.fold_of(case) == "0"} == {"pair_zero_two"}
    assert {src for case, src in sources.items() if data.fold_of(case) == "1"} == {"cca_1_2"}
    raw["units"]["2d"] = [u for u in raw["units"]["2d"] if u["name"] != "pair_zero_two"]
    with pytest.raises(PlanError, match="no cca 2D unit that predicts folds 0, 2"):
        map_sources(Plan(raw), data, "2")
    assert set(map_sources(Plan(raw), data, "all").values()) == set(raw["fold_names"])


def test_honest_records_pass(demo_preprocessed):
    _record_units(demo_preprocessed)
    leaks, checks = find_leaks(None, "quick")
    assert leaks == [] and checks > 50
    result = CliRunner().invoke(check_leakage_entry, ["--preset", "quick"])
    assert result.exit_code == 0 and "no leakage" in result.output


def test_leaky_manifest_is_rejected_naming_case_and_unit(demo_preprocessed):
    _, data, _ = _record_units(demo_preprocessed)
    test_case = data.fold_cases(["0"])[0]
    # a manifest whose maps for fold 0's VFN came from a fold unit that trained on fold 0
    manifest = demo_preprocessed / "fusion" / "quick" / "0" / "manifest.json"
    other = data.fold_cases(["1"])[0]
    write_json(manifest, {"cases": {other: {"fold": "1", "units": {"2d_axial": "1", "2d_coronal": "cca_0_1",
                                                                    "2d_sagittal": "cca_0_1"}}}})
    result = CliRunner().invoke(check_leakage_entry, ["--preset", "quick"])
    assert result.exit_code == 1
    assert test_case in result.output and "2d_axial unit '1'" in result.output


def test_vfn_trained_on_its_test_fold_is_rejected(demo_preprocessed):
    _, data, results = _record_units(demo_preprocessed)
    write_json(paths.unit_dir(results, "quick", "vfn", "3") / "unit.json", {"train_cases": data.all_cases})
    leaks, _ = find_leaks(None, "quick")
    assert leaks and all("vfn unit '3'" in leak for leak in leaks)
    assert {leak.split()[1] for leak in leaks} == set(data.fold_cases(["3"]))
