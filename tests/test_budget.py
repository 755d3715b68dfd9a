"""Budgeted schedules: calibration, allocation, refusal, re-planning, resume, and training at a coarser resolution."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vfnet import paths
from vfnet.atomic import read_json, write_json
from vfnet.errors import PlanError
from vfnet.experiment_planning.plans import Plan, budget_minutes, check_preset, network_key
from vfnet.inference.predict2d import predict_volume_2d
from vfnet.networks.unet2d import UNet2D
from vfnet.resolution import downsample_image, downsample_label, upsample_probabilities
from vfnet.training.budget import (
    MIN_ITERATIONS,
    Budget,
    UnitCost,
    allocate,
    plan_budget,
    unit_costs,
    vfn_downsample,
    vfn_fixed_seconds,
    vfn_validation_windows,
)
from vfnet.training.calibration import candidate_factors
from vfnet.training.units import prepare_unit
from vfnet.views import VIEWS
from vfnet_cli.train import train_all_entry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calibration(step_2d=(0.2, 0.05), vfn_step=0.1, seconds=5.0) -> dict:
    """A calibration as :func:`calibrate` writes it: two resolutions per view, finest first."""
    views = {}
    for view in VIEWS:
        views[view] = [{"input_downsample": [1, f, f], "patch_size": [64 // f, 64 // f], "num_poolings": 2,
                        "features": [8, 16, 32], "slices_per_case": 20, "slice_shape": [64 // f, 64 // f],
                        "step_s": step, "slice_s": 0.001} for f, step in zip((1, 2), step_2d)]
    return {"device": "cpu", "threads": 1, "views": views, "vfn": {"step_s": vfn_step, "window_s": 0.01},
            "seconds": seconds}


def test_budget_preset_names():
    assert budget_minutes("quick") == 60 and budget_minutes("budget30") == 30 and budget_minutes("budget7.5") == 7.5
    assert budget_minutes("default") is None and budget_minutes("paper") is None
    assert check_preset("budget15") == "budget15"
    with pytest.raises(PlanError, match="unknown preset 'fast'"):
        check_preset("fast")


def test_candidate_factors_only_shrink_large_axes():
    assert candidate_factors([36, 50, 35]) == [(1, 1, 1)]
    assert candidate_factors([36, 256, 256]) == [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert candidate_factors([200, 160, 60]) == [(1, 1, 1), (2, 2, 1), (4, 4, 1)]


def test_allocation_fills_the_budget_and_shares_it():
    costs = [UnitCost("2d_axial", str(k), 10.0, 0.2, 1.0, 100) for k in range(4)]
    costs += [UnitCost("2d_coronal", str(k), 10.0, 0.1, 1.0, 100) for k in range(4)]
    costs += [UnitCost("vfn", str(k), 5.0, 0.5, 1.0, 100) for k in range(2)]
    iterations = allocate(costs, 1200.0)
    planned = sum(c.fixed_s + iterations[(c.network, c.unit)] * c.step_s for c in costs)
    assert 0.97 * 1200 <= planned <= 1200
    # equal time per view: the faster view gets twice the steps
    assert iterations[("2d_coronal", "0")] > 1.6 * iterations[("2d_axial", "0")]
    vfn_time = sum(iterations[(c.network, c.unit)] * c.step_s for c in costs if c.network == "vfn")
    step_time = sum(iterations[(c.network, c.unit)] * c.step_s for c in costs)
    assert 0.15 <= vfn_time / step_time <= 0.3
    # measured twice as slow: half the steps
    slower = allocate(costs, 1200.0, speed=2.0)
    assert slower[("2d_axial", "0")] < 0.5 * iterations[("2d_axial", "0")]
    with pytest.raises(PlanError):
        allocate(costs, 100.0)


def test_epochs_allocation_follows_training_cases(demo_preprocessed):
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    calibration = _calibration()
    settings = {v: calibration["views"][v][0] for v in VIEWS}
    costs = unit_costs(plan, splits, calibration, settings, "epochs", ["2d_axial"])
    iterations = allocate(costs, 3000.0)
    # 4 folds of 2 cases: a fold unit trains on 3 folds, a CCA unit on 2, "all" on 4
    assert iterations[("2d_axial", "all")] > iterations[("2d_axial", "0")] > iterations[("2d_axial", "cca_0_1")]


def test_too_small_budget_is_refused_with_the_smallest_that_works(demo_preprocessed):
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    with pytest.raises(PlanError) as refused:
        plan_budget(plan, splits, 2.0, _calibration())
    match = re.search(r"smallest budget that works is (\d+) min", str(refused.value))
    assert match, str(refused.value)
    smallest = int(match.group(1))
    assert smallest > 2
    body = plan_budget(plan, splits, float(smallest), _calibration())
    assert all(u["iterations"] >= MIN_ITERATIONS["2d"] for u in body["units"].values())
    assert body["planned_total_s"] <= smallest * 60


def test_views_coarsen_only_when_the_budget_is_short(demo_preprocessed):
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    roomy = plan_budget(plan, splits, 600.0, _calibration())
    assert {tuple(v["input_downsample"]) for v in roomy["views"].values()} == {(1, 1, 1)}
    tight = plan_budget(plan, splits, 45.0, _calibration())
    assert {tuple(v["input_downsample"]) for v in tight["views"].values()} == {(1, 2, 2)}
    assert abs(tight["planned_total_s"] - 45 * 60) < 0.05 * 45 * 60


def test_a_budgeted_vfn_fuses_at_the_views_finest_factor(demo_preprocessed, tmp_path):
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    assert plan.vfn.budget_downsample == "views" and plan.vfn.input_downsample == [1, 1, 1]
    for minutes, factor in ((600.0, [1, 1, 1]), (45.0, [1, 2, 2])):
        body = plan_budget(plan, splits, minutes, _calibration())
        assert body["vfn_input_downsample"] == factor
        assert Budget(tmp_path / "budget.json", body).schedule("vfn", "0")["input_downsample"] == factor
    # the finest factor per axis over the views
    views = {"axial": {"input_downsample": [1, 4, 4]}, "coronal": {"input_downsample": [1, 2, 4]},
             "sagittal": {"input_downsample": [2, 4, 2]}}
    assert vfn_downsample(plan, views) == [1, 2, 2]
    # a plan that keeps its own factor ("plan"; also a plan written before the key existed)
    data = read_json(demo_preprocessed / "plans.json")
    data["vfn"]["budget_downsample"] = "plan"
    data["vfn"]["input_downsample"] = [1, 1, 2]
    write_json(demo_preprocessed / "plans.json", data)
    assert vfn_downsample(Plan.load(demo_preprocessed), views) == [1, 1, 2]
    del data["vfn"]["budget_downsample"]
    write_json(demo_preprocessed / "plans.json", data)
    assert Plan.load(demo_preprocessed).vfn.budget_downsample == "plan"
    # a budget planned before the VFN followed the views leaves the VFN's schedule without a factor
    old = plan_budget(plan, splits, 45.0, _calibration())
    del old["vfn_input_downsample"]
    assert "input_downsample" not in Budget(tmp_path / "old.json", old).schedule("vfn", "0")


def test_workers_share_workers_times_the_wall_budget(demo_preprocessed, tmp_path):
    """Two workers side by side get twice the compute of one: the same plan as one worker with double the minutes."""
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    one = plan_budget(plan, splits, 120.0, _calibration())
    two = plan_budget(plan, splits, 60.0, _calibration(), workers=2)
    assert two["budget_min"] == 60.0 and two["workers"] == 2
    assert {k: u["iterations"] for k, u in two["units"].items()} == pytest.approx(
        {k: u["iterations"] for k, u in one["units"].items()}, abs=2)
    smallest = {}
    for workers in (1, 2):
        with pytest.raises(PlanError) as refused:
            plan_budget(plan, splits, 2.0, _calibration(), workers=workers)
        smallest[workers] = int(re.search(r"smallest budget that works is (\d+) min", str(refused.value)).group(1))
    assert smallest[2] == -(-smallest[1] // 2)  # wall minutes: half of one worker's, rounded up
    # re-planning counts compute time: after half of the compute is spent, units keep their iterations
    budget = Budget(tmp_path / "budget.json", two)
    before = {k: u["iterations"] for k, u in budget.data["units"].items()}
    budget.replan(plan, splits, two["calibration"]["seconds"], frozen=set())
    assert {k: u["iterations"] for k, u in budget.data["units"].items()} == pytest.approx(before, rel=0.02)


def test_replan_uses_measured_speed_and_keeps_started_units(demo_preprocessed, tmp_path):
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    budget = Budget(tmp_path / "budget.json", plan_budget(plan, splits, 200.0, _calibration()))
    before = {k: u["iterations"] for k, u in budget.data["units"].items()}
    first = "2d_axial/0"
    budget.record("2d_axial", "0", 2 * budget.data["units"][first]["planned_s"])  # twice as slow as planned
    elapsed = budget.data["calibration"]["seconds"] + budget.data["units"][first]["actual_s"]
    budget.replan(plan, splits, elapsed, frozen={"2d_axial/1"})
    after = {k: u["iterations"] for k, u in budget.data["units"].items()}
    assert budget.speed() == pytest.approx(2.0)
    assert after["2d_axial/1"] == before["2d_axial/1"]  # started: unchanged
    assert after[first] == before[first]
    assert after["2d_coronal/0"] < before["2d_coronal/0"]
    assert read_json(tmp_path / "budget.json")["replanned"] == 1


def test_unit_takes_budget_schedule_and_resume_keeps_its_own(demo_preprocessed):
    results = paths.results_root() / demo_preprocessed.name
    body = plan_budget(Plan.load(demo_preprocessed), read_json(demo_preprocessed / "splits.json"), 300.0,
                       _calibration())
    write_json(results / "budget300" / "budget.json", body)
    setup = prepare_unit(None, "2d", "2d_coronal", "cca_0_1", "budget300", "cpu")
    assert setup.schedule.iterations == body["units"]["2d_coronal/cca_0_1"]["iterations"]
    assert setup.schedule.patch_size == body["views"]["coronal"]["patch_size"]
    assert setup.schedule.lr == 0.003 and setup.schedule.optimizer == "adam"  # with the quick schedule's optimizer
    # a unit that started with another schedule continues it unchanged
    write_json(setup.out / "unit.json", {"schedule": {**setup.schedule.to_dict(), "iterations": 7}})
    (setup.out / "checkpoint_latest.pth").write_bytes(b"x")
    assert prepare_unit(None, "2d", "2d_coronal", "cca_0_1", "budget300", "cpu", resume=True).schedule.iterations == 7
    assert prepare_unit(None, "2d", "2d_coronal", "cca_0_1", "budget300", "cpu").schedule.iterations == \
        body["units"]["2d_coronal/cca_0_1"]["iterations"]


def test_train_all_refuses_a_budget_too_small(demo_preprocessed):
    result = CliRunner().invoke(train_all_entry, ["--budget", "0.5", "-q"])
    assert result.exit_code == 2, result.output
    assert re.search(r"budget of 0.5 min cannot give every unit .* smallest budget that works is \d+ min",
                     result.output)
    calibration = read_json(paths.results_root() / demo_preprocessed.name / "budget0.5" / "budget.json") \
        if (paths.results_root() / demo_preprocessed.name / "budget0.5" / "budget.json").is_file() else None
    assert calibration is None  # nothing half-written
    print_jobs = CliRunner().invoke(train_all_entry, ["--preset", "quick", "--print-jobs"])
    assert "--no-image" not in print_jobs.output and "vfnet_train 3d" not in print_jobs.output
    assert "vfnet_train vfn 0 -d" in print_jobs.output
    contradiction = CliRunner().invoke(train_all_entry, ["--budget", "10", "--preset", "paper", "--print-jobs"])
    assert contradiction.exit_code == 2 and "contradict" in contradiction.output


def test_resolution_round_trip():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 6, 16, 18)).astype(np.float32)
    small = downsample_image(image, (1, 2, 2))
    assert small.shape == (1, 6, 8, 9)
    assert small[0, 0, 0, 0] == pytest.approx(image[0, 0, :2, :2].mean(), rel=1e-5)
    label = np.zeros((6, 16, 18), np.uint8)
    label[:, 4:12, 4:12] = 2
    small_label = downsample_label(label, (1, 2, 2), 3)
    assert small_label.shape == (6, 8, 9) and (small_label == 2).sum() == 6 * 16
    probabilities = np.stack([1.0 - (small_label == 2), (small_label == 2) * 1.0]).astype(np.float32)
    up = upsample_probabilities(probabilities, label.shape)
    assert up.shape == (2, 6, 16, 18)
    np.testing.assert_allclose(up.sum(0), 1.0, atol=1e-5)
    assert ((up[1] > 0.5) == (label == 2)).mean() > 0.97


def test_upsampling_that_keeps_the_slices_is_trilinear():
    """With the slices kept, upsampling runs per slice (bilinear), and gives trilinear's values; a factor
    along z still upsamples all three axes."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    for coarse, shape in (((3, 5, 4, 6), (5, 16, 24)), ((2, 3, 5, 7), (3, 11, 7)), ((2, 3, 4, 4), (6, 8, 8))):
        probabilities = rng.random(coarse).astype(np.float32)
        trilinear = F.interpolate(torch.from_numpy(probabilities)[None], size=shape, mode="trilinear",
                                  align_corners=False)[0].numpy()
        up = upsample_probabilities(probabilities, shape)
        assert up.shape == (coarse[0], *shape) and up.flags.c_contiguous
        np.testing.assert_allclose(up, trilinear, atol=1e-6)
        assert np.abs(up - up[:, :1]).max() > 0.05  # the slices differ: no slice was copied onto the others


def test_resolution_of_read_only_arrays_warns_nothing():
    image = np.ones((1, 4, 6, 6), np.float32)
    label = np.ones((4, 6, 6), np.int64)
    image.flags.writeable = label.flags.writeable = False  # as memory-mapped cases are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert downsample_image(image, (1, 2, 2)).shape == (1, 4, 3, 3)
        assert (downsample_label(label, (1, 2, 2), 2) == 1).all()


def test_prediction_uses_the_resolution_the_unit_trained_at():
    torch.manual_seed(0)
    network = UNet2D(3, 2, [4, 8]).eval()
    image = np.random.default_rng(1).normal(size=(1, 5, 16, 20)).astype(np.float32)
    full = predict_volume_2d(network, image, "axial", 3)
    network.input_downsample = (1, 2, 2)
    coarse = predict_volume_2d(network, image, "axial", 3)
    assert coarse.shape == full.shape == (2, 5, 16, 20)
    expected = upsample_probabilities(predict_volume_2d(UNet2DWrapper(network), downsample_image(image, (1, 2, 2)),
                                                        "axial", 3), image.shape[1:])
    np.testing.assert_allclose(coarse, expected, atol=1e-5)


class UNet2DWrapper(torch.nn.Module):
    """The same weights without the recorded resolution."""

    def __init__(self, network):
        super().__init__()
        self.inner = network

    def forward(self, x):
        return self.inner(x)


def test_replan_on_schedule_keeps_the_plan(demo_preprocessed, tmp_path):
    # a run exactly on plan must not move time between views when one view's units are done first
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    budget = Budget(tmp_path / "budget.json", plan_budget(plan, splits, 200.0, _calibration()))
    before = {k: u["iterations"] for k, u in budget.data["units"].items()}
    axial = [k for k in before if k.startswith("2d_axial/")]
    elapsed = budget.data["calibration"]["seconds"]
    for key in axial[:-2]:
        network, unit = key.split("/")
        budget.record(network, unit, budget.data["units"][key]["planned_s"])
        elapsed += budget.data["units"][key]["planned_s"]
        budget.replan(plan, splits, elapsed, frozen=set())
    after = {k: u["iterations"] for k, u in budget.data["units"].items()}
    for key in axial[-2:] + ["2d_coronal/0", "2d_sagittal/all", "vfn/0"]:
        assert after[key] == pytest.approx(before[key], rel=0.03, abs=2), key


def test_replan_recovers_after_a_slow_start(demo_preprocessed, tmp_path):
    """A first unit far slower than planned (a GPU's warm-up) cuts the others to their minimum; when the next
    units run on plan, the re-plan gives the rest of the budget back to the units not yet started."""
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    with pytest.raises(PlanError) as refused:
        plan_budget(plan, splits, 1.0, _calibration())
    smallest = int(re.search(r"smallest budget that works is (\d+) min", str(refused.value)).group(1))
    budget = Budget(tmp_path / "budget.json", plan_budget(plan, splits, 1.5 * smallest, _calibration()))
    units = budget.data["units"]
    before = {k: u["iterations"] for k, u in units.items()}
    keys = list(units)
    elapsed = budget.data["calibration"]["seconds"]
    network, unit = keys[0].split("/")
    budget.record(network, unit, 3 * units[keys[0]]["planned_s"])
    elapsed += units[keys[0]]["actual_s"]
    budget.replan(plan, splits, elapsed, frozen=set())
    cut = {k: units[k]["iterations"] for k in keys[1:]}
    assert all(n == MIN_ITERATIONS[network_key(k.split("/")[0])] for k, n in cut.items())
    # the next units take half their planned time: the measured speed falls and the budget opens again
    for key in keys[1:11]:
        network, unit = key.split("/")
        budget.record(network, unit, 0.5 * units[key]["planned_s"])
        elapsed += units[key]["actual_s"]
        budget.replan(plan, splits, elapsed, frozen=set())
    assert units["vfn/0"]["iterations"] > cut["vfn/0"]
    assert units[keys[-2]]["iterations"] > cut[keys[-2]]
    assert all(u["planned_iterations"] == before[k] for k, u in units.items())


class _CountingVfn(torch.nn.Module):
    """Stands in for a VFN: logits favouring the mean map's class, and the window shapes it saw."""

    use_image = True

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.seen = num_classes, []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        maps = x[:, 1:].reshape(x.shape[0], 3, self.num_classes - 1, *x.shape[2:]).mean(1)
        return torch.log(torch.cat([1 - maps.sum(1, keepdim=True), maps], 1).clamp_min(1e-6)) + self.weight


def test_vfn_fuses_at_the_resolution_it_trained_at(tmp_path):
    from vfnet.fusion.methods import VfnConfig, fuse, vfn_input
    from vfnet.training.data_vfn import load_fusion_samples

    label = np.zeros((8, 32, 32), np.uint8)
    label[2:6, 8:24, 8:24] = 1
    maps = {v: np.stack([1.0 - label, label * 1.0]).astype(np.float32) for v in VIEWS}
    image = np.random.default_rng(0).normal(size=(1, 8, 32, 32)).astype(np.float32)
    config = VfnConfig([8, 8, 8], [4, 4, 4], [1, 2, 2])
    model = _CountingVfn(2)
    full = fuse("vfn", maps, image, model=model, vfn_config=config)
    full_windows = len(model.seen)
    model.seen.clear()
    model.input_downsample = (1, 4, 4)
    coarse = fuse("vfn", maps, image, model=model, vfn_config=config)
    assert len(model.seen) < full_windows and set(model.seen) == {(8, 8, 8)}
    assert coarse.shape == full.shape == label.shape
    assert (coarse == label).mean() > 0.97 and (full == label).all()
    # training samples are block-averaged the same way, labels by majority
    np.savez(tmp_path / "c.npz", inputs=vfn_input(image, maps).astype(np.float16), label=label)
    (inputs, small), = load_fusion_samples(tmp_path, ["c"], (1, 4, 4), 2)
    assert inputs.shape == (4, 8, 8, 8) and small.shape == (8, 8, 8)
    assert small.sum() * 16 == label.sum()


def test_a_budget_needs_a_margin_over_the_minimum_schedules(demo_preprocessed, monkeypatch):
    """A budget that holds the minimum schedules only at the calibrated speed is refused, and the smallest
    budget named includes the margin (MINIMUM_MARGIN)."""
    from vfnet.training import budget as budget_module

    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")

    def smallest() -> int:
        with pytest.raises(PlanError) as refused:
            plan_budget(plan, splits, 0.1, _calibration())
        return int(re.search(r"smallest budget that works is (\d+) min", str(refused.value)).group(1))

    with_margin = smallest()
    monkeypatch.setattr(budget_module, "MINIMUM_MARGIN", 1.0)
    without = smallest()
    assert with_margin >= budget_module.MINIMUM_MARGIN * without - 1 and with_margin > without
    plan_budget(plan, splits, float(without), _calibration())  # enough at the calibrated speed
    monkeypatch.undo()
    with pytest.raises(PlanError):
        plan_budget(plan, splits, float(without), _calibration())
    assert plan_budget(plan, splits, float(with_margin), _calibration())["units"]


def _plan_like(demo_preprocessed, median_shape, num_classes: int, vfn_patch, vfn_validation_cases: int = 5) -> Plan:
    """The demo plan with another median case shape, number of classes, VFN patch and VFN validation minimum."""
    data = copy.deepcopy(Plan.load(demo_preprocessed).data)
    data.update(median_shape=list(median_shape), num_classes=num_classes,
                labels={"background": 0, **{f"organ{c}": c for c in range(1, num_classes)}})
    data["vfn"] = {**data["vfn"], "patch_size": list(vfn_patch), "stride": list(vfn_patch),
                   "validation_cases": vfn_validation_cases}
    return Plan(data)


def test_vfn_fixed_cost_matches_the_measured_units(demo_preprocessed):
    """A VFN unit's time beside its steps (fusion set built and loaded, 7 validations over whole validation cases,
    checkpoints, plots), measured on 2 CPU cores for fold 0: CHAOST2 (15 cases of 36x256x256, 5 classes, 2
    validation cases of 16 tiles) 74.5 s, where the old model planned 10 s and a 60-minute run's VFN units took 2.2x
    their plan; Hippocampus (150 cases of 36x50x35, 3 classes, 22 validation cases of one tile) 19.1 s."""
    chaos = _plan_like(demo_preprocessed, (36, 256, 256), 5, (40, 64, 64), vfn_validation_cases=0)
    assert vfn_validation_windows(chaos) == 16
    calibration = {"vfn": {"step_s": 0.27, "window_s": 0.053}}
    measured = vfn_fixed_seconds(chaos, 15, calibration)
    assert 0.85 * 74.5 <= measured <= 1.15 * 74.5
    # new plans validate on 5 of the 15 cases, not 2: the validation windows cost 2.5 times as much
    planned = vfn_fixed_seconds(_plan_like(demo_preprocessed, (36, 256, 256), 5, (40, 64, 64)), 15, calibration)
    assert 1.2 * measured < planned < 2.0 * measured
    hippocampus = _plan_like(demo_preprocessed, (36, 50, 35), 3, (40, 56, 40))
    assert vfn_validation_windows(hippocampus) == 1
    assert 0.8 * 19.1 <= vfn_fixed_seconds(hippocampus, 150, {"vfn": {"step_s": 0.11, "window_s": 0.016}}) \
        <= 1.2 * 19.1


def test_vfn_units_with_more_or_larger_cases_are_planned_longer(demo_preprocessed):
    splits = read_json(demo_preprocessed / "splits.json")
    calibration = _calibration()
    settings = {v: calibration["views"][v][0] for v in VIEWS}

    def fixed(plan: Plan, cal: dict = calibration) -> dict[tuple[str, str], float]:
        networks = ["2d_axial", "vfn"]
        return {(c.network, c.unit): c.fixed_s for c in unit_costs(plan, splits, cal, settings, "equal", networks)}

    small = _plan_like(demo_preprocessed, (36, 64, 64), 3, (32, 32, 32))
    base = fixed(small)
    # VFN "all" builds its fusion set from 8 cases and validates 1, a fold unit from 6
    assert base[("vfn", "all")] > base[("vfn", "0")]
    # larger cases, more classes (more fusion-set channels), slower or more validation windows: longer
    larger = fixed(_plan_like(demo_preprocessed, (36, 128, 128), 3, (32, 32, 32)))
    assert larger[("vfn", "0")] > 1.4 * base[("vfn", "0")]  # 4x the voxels and validation tiles
    assert fixed(_plan_like(demo_preprocessed, (36, 64, 64), 5, (32, 32, 32)))[("vfn", "0")] > base[("vfn", "0")]
    assert fixed(_plan_like(demo_preprocessed, (36, 64, 64), 3, (16, 16, 16)))[("vfn", "0")] > base[("vfn", "0")]
    slower = {**calibration, "vfn": {**calibration["vfn"], "window_s": 10 * calibration["vfn"]["window_s"]}}
    assert fixed(small, slower)[("vfn", "0")] > base[("vfn", "0")]
    # a 2D unit pays for the held-out maps it writes (larger cases: larger maps); "all" predicts nothing
    assert base[("2d_axial", "cca_0_1")] > base[("2d_axial", "0")] > base[("2d_axial", "all")]
    assert larger[("2d_axial", "cca_0_1")] - larger[("2d_axial", "all")] > \
        3 * (base[("2d_axial", "cca_0_1")] - base[("2d_axial", "all")])
    # the whole plan, fixed costs included, still fills the budget without passing it
    large = _plan_like(demo_preprocessed, (36, 256, 256), 5, (40, 64, 64))
    body = plan_budget(large, splits, 60.0, calibration)
    assert 0.95 * 3600 <= body["planned_total_s"] <= 3600
    vfn_costs = {c.unit: c for c in unit_costs(large, splits, calibration, body["views"], "equal", ["vfn"])}
    for unit, cost in vfn_costs.items():
        planned = body["units"][f"vfn/{unit}"]
        assert planned["planned_s"] == pytest.approx(cost.fixed_s + planned["iterations"] * cost.step_s, abs=0.1)
        assert cost.fixed_s > 20.0  # 8 cases of 36x256x256: fusion set and validation, not the old 10 s


def test_a_fusion_set_built_as_its_own_step_counts_for_its_vfn_unit(demo_preprocessed, tmp_path):
    plan = Plan.load(demo_preprocessed)
    splits = read_json(demo_preprocessed / "splits.json")
    budget = Budget(tmp_path / "budget.json", plan_budget(plan, splits, 200.0, _calibration()))
    budget.record_fusion_set("0", 30.0)
    budget.record_fusion_set("no-such-unit", 5.0)  # not budgeted: ignored
    budget.record("vfn", "0", 20.0)
    budget.record("2d_axial", "0", 20.0)
    assert budget.data["units"]["vfn/0"]["actual_s"] == 50.0
    assert budget.data["units"]["2d_axial/0"]["actual_s"] == 20.0
    assert read_json(tmp_path / "budget.json")["units"]["vfn/0"]["fusion_set_s"] == 30.0
