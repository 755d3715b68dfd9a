"""The typed, versioned plan: unknown and missing keys named, version-1 plans migrated with the constants
version-1 code used, and the settings that change results reaching the trainers from plans.json."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import synthetic_plan

from vfnet.atomic import read_json, write_json
from vfnet.errors import PlanError
from vfnet.experiment_planning.plans import SCHEMA_VERSION, Plan, preprocessing_hash
from vfnet.experiment_planning.schema import PlanSchema
from vfnet.prediction import models as prediction_models
from vfnet.training.config import PolyLR, StepLR, TrainingConfig
from vfnet.training.train2d import fit_2d_unit
from vfnet.training.units import prepare_unit

# plans.json "presets" as schema version 1 wrote them (vfnet.experiment_planning.plans.SCHEDULES then)
V1_SCHEDULES = {
    "quick": {
        "2d": {"iterations": 300, "batch_size": 8, "lr": 0.003, "optimizer": "adam", "val_every": 50, "num_workers": 1},
        "vfn": {"iterations": 200, "batch_size": 2, "lr": 0.001, "optimizer": "adam", "val_every": 50,
                "num_workers": 1},
        "3d": {"iterations": 250, "batch_size": 2, "lr": 0.001, "optimizer": "adam", "val_every": 50, "num_workers": 1},
    },
    "default": {
        "2d": {"iterations": 4000, "batch_size": 32, "lr": 0.01, "val_every": 250, "num_workers": 2},
        "vfn": {"iterations": 3000, "batch_size": 8, "lr": 0.01, "val_every": 250, "num_workers": 2},
        "3d": {"iterations": 4000, "batch_size": 2, "lr": 0.01, "val_every": 250, "num_workers": 2},
    },
    "paper": {
        "2d": {"iterations": 80000, "batch_size": 32, "lr": 0.01, "val_every": 1000, "num_workers": 6},
        "vfn": {"iterations": 30000, "batch_size": 16, "lr": 0.01, "val_every": 1000, "num_workers": 6},
        "3d": {"iterations": 250000, "batch_size": 2, "lr": 0.01, "val_every": 1000, "num_workers": 6},
    },
}
TINY_2D = {"iterations": 2, "val_every": 2, "batch_size": 2, "num_workers": 0, "val_batches": 1}


def version_1(plan: dict) -> dict:
    """``plan`` as schema version 1 wrote it: no training or fusion sections, no 3D stride or mirroring, no
    VFN mirroring, and the settings that change results left out of the schedules."""
    old = copy.deepcopy(plan)
    old["schema_version"] = 1
    del old["training"], old["fusion"], old["unet3d"]["stride"], old["unet3d"]["mirror_axes"]
    del old["vfn"]["mirror_axes"]
    old["presets"] = copy.deepcopy(V1_SCHEDULES)
    return old


def _refused(data: dict) -> str:
    with pytest.raises(PlanError) as error:
        Plan(data)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_planner_output_round_trips_through_the_typed_plan():
    plan = synthetic_plan()
    typed = Plan(json.loads(json.dumps(plan)))
    assert typed.schema.to_dict() == plan and PlanSchema.from_dict(plan).to_dict() == plan
    assert plan["schema_version"] == SCHEMA_VERSION == 2
    assert typed.vfn.patch_size == plan["vfn"]["patch_size"] and typed.view("coronal").mirror_axes == []
    assert typed.unet3d.stride == [p // 2 for p in typed.unet3d.patch_size] and typed.unet3d.mirror_axes == [0, 1, 2]
    assert typed.schedule("budget30", "2d_axial") == typed.schedule("quick", "2d")
    with pytest.raises(PlanError, match="unknown view 'axail'"):
        typed.view("axail")


@pytest.mark.parametrize(("edit", "path", "hint"), [
    (lambda p: p["presets"]["quick"]["2d"].update(iteratons=5), "presets.quick.2d.iteratons",
     " (did you mean 'iterations'?)"),
    (lambda p: p["views"]["axial"].update(mirror=[]), "views.axial.mirror", " (did you mean 'mirror_axes'?)"),
    (lambda p: p["presets"]["default"]["vfn"]["lr_schedule"].update(gama=0.5), "presets.default.vfn.lr_schedule.gama",
     " (did you mean 'gamma'?)"),
    (lambda p: p["views"].update(axail=p["views"]["axial"]), "views.axail", " (did you mean 'axial'?)"),
    (lambda p: p.update(seed=1), "seed", "; expected schema_version, dataset_name, axes,"),
])
def test_an_unknown_key_is_refused_with_its_path(edit, path, hint):
    plan = synthetic_plan()
    edit(plan)
    assert _refused(plan).startswith(f"plans.json: unknown key '{path}'{hint}")


@pytest.mark.parametrize(("edit", "path"), [
    (lambda p: p["training"].pop("seed"), "training.seed"),
    (lambda p: p["vfn"].pop("mirror_axes"), "vfn.mirror_axes"),
    (lambda p: p["presets"]["default"]["2d"].pop("momentum"), "presets.default.2d.momentum"),
    (lambda p: p["presets"].pop("paper"), "presets.paper"),
    (lambda p: p.pop("fusion"), "fusion"),
])
def test_a_missing_key_is_refused_with_its_path(edit, path):
    plan = synthetic_plan()
    edit(plan)
    assert _refused(plan) == f"plans.json: missing key '{path}'"


def test_malformed_values_and_a_plan_file_are_named(tmp_path):
    plan = synthetic_plan()
    plan["presets"]["default"]["2d"]["optimizer"] = "rmsprop"
    assert _refused(plan) == "plans.json: 'presets.default.2d.optimizer' must be one of sgd, adam, got 'rmsprop'"
    plan = synthetic_plan()
    plan["presets"]["paper"]["3d"]["momentum"] = None
    assert "'presets.paper.3d.momentum' must be set for optimizer sgd" in _refused(plan)
    plan = synthetic_plan()
    plan["presets"]["quick"]["vfn"]["val_batches"] = 3
    assert "'presets.quick.vfn.val_batches' must be null" in _refused(plan)
    plan = synthetic_plan()
    plan["training"]["validation_fraction"] = 1.5
    assert "'training.validation_fraction' must be a number in [0, 1], got 1.5" in _refused(plan)
    plan["training"]["validation_fraction"] = 0.15
    plan["presets"]["quick"]["3d"]["iteratons"] = 1
    write_json(tmp_path / "plans.json", plan)
    with pytest.raises(PlanError) as error:
        Plan.load(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'plans.json'}: unknown key 'presets.quick.3d.iteratons'")


@pytest.mark.parametrize("num_classes", [2, 3])
def test_a_version_1_plan_migrates_to_the_constants_version_1_code_used(num_classes):
    current = synthetic_plan(num_classes=num_classes)
    old = version_1(current)
    before = copy.deepcopy(old)
    plan = Plan(old)
    assert old == before  # the file's dict is left as it was
    assert plan.data == current  # exactly what the planner writes today
    assert plan["training"] == {"seed": 12345, "validation_fraction": 0.15}
    assert plan["fusion"] == {"fallback_method": "vfn", "stack_seed": 12345, "stack_max_voxels": 200000}
    assert plan.unet3d.mirror_axes == [0, 1, 2] and plan.vfn.mirror_axes == []
    views = {"lr_schedule": {"name": "poly", "exponent": 0.9}, "grad_clip": 12.0, "loss": "dice_ce",
             "val_batches": 5, "val_batch_size": None, "validate_at_start": False}
    nnunet_sgd = {"optimizer": "sgd", "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
    adamw = {"optimizer": "adam", "momentum": None, "nesterov": None, "weight_decay": 3e-5}
    vfn = {"lr_schedule": {"name": "step", "fractions": [2 / 3, 5 / 6], "gamma": 0.1}, "grad_clip": None,
           "loss": "dice" if num_classes == 2 else "dice_ce", "val_batches": None, "val_batch_size": 4,
           "validate_at_start": True}
    paper_sgd = {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-5}
    for preset, networks in V1_SCHEDULES.items():
        for network, schedule in networks.items():
            lengths = {k: v for k, v in schedule.items() if k != "optimizer"}
            optimizer = adamw if preset == "quick" else (paper_sgd if network == "vfn" else nnunet_sgd)
            expected = {**lengths, **optimizer, **(vfn if network == "vfn" else views)}
            assert plan.schedule(preset, network).to_dict() == expected, (preset, network)


def test_version_1_keys_read_with_a_default_and_overridden_keys():
    old = version_1(synthetic_plan())
    for key in ("view_prior", "augmentation", "input_downsample"):
        del old["vfn"][key]
    # version 1 read "sgd" as nnU-Net's SGD for every network, and the VFN trainer set its own clipping and seed
    old["presets"]["default"]["vfn"].update(optimizer="sgd", grad_clip=5.0, seed=3)
    old["presets"]["quick"]["2d"]["val_batches"] = 2
    plan = Plan(old)
    assert (plan.vfn.view_prior, plan.vfn.augmentation, plan.vfn.input_downsample) == (False, "none", [1, 1, 1])
    vfn = plan.schedule("default", "vfn")
    assert (vfn.momentum, vfn.nesterov, vfn.weight_decay, vfn.grad_clip) == (0.99, True, 3e-5, None)
    assert plan.schedule("quick", "2d").val_batches == 2
    paper = version_1(synthetic_plan())
    paper["vfn"]["augmentation"] = "paper"
    assert Plan(paper).vfn.mirror_axes == [0, 1, 2]  # version 1's paper augmentation flipped every axis
    paper["presets"]["quick"]["3d"]["iteratons"] = 9  # version 1 let this pass into ``extra``
    assert "unknown key 'presets.quick.3d.iteratons'" in _refused(paper)


@pytest.mark.parametrize(("version", "message"), [
    (3, ("plans.json has schema version 3, newer than the version 2 this vfnet reads; update vfnet, or rerun "
         "vfnet_plan_and_preprocess with this one")),
    (0, "plans.json has schema version 0, which this vfnet cannot read; rerun vfnet_plan_and_preprocess"),
    (None, "plans.json has no valid schema_version (None); rerun vfnet_plan_and_preprocess"),
])
def test_other_versions_get_one_sentence(version, message):
    assert _refused({**synthetic_plan(), "schema_version": version}) == message


def test_the_preprocessing_hash_ignores_the_schema_version():
    plan = synthetic_plan(modality="CT")
    relevant = {k: plan[k] for k in ("channel_names", "labels", "target_spacing", "normalization")}
    version_1_hash = hashlib.sha1(json.dumps({**relevant, "schema_version": 1}, sort_keys=True).encode()).hexdigest()
    old = version_1(plan)
    old.pop("resampling", None)  # version 1 had no resampling key: it zoomed all axes jointly
    joint = {**plan, "resampling": {"scheme": "joint", "anisotropy_threshold": 3.0}}
    assert preprocessing_hash(joint) == preprocessing_hash(old) == version_1_hash[:12]
    # the planned scheme (nnU-Net's separate coarse axis) changes arrays of anisotropic data, so it counts
    assert plan["resampling"]["scheme"] == "separate_coarse_axis"
    assert preprocessing_hash(plan) != version_1_hash[:12]
    joint["normalization"]["0"]["mean"] += 1
    assert preprocessing_hash(joint) != version_1_hash[:12]


def test_schedules_build_the_optimizers_and_learning_rates_of_version_1():
    plan = Plan(synthetic_plan())
    weight = [torch.nn.Parameter(torch.zeros(2))]
    expected = {("default", "2d"): (torch.optim.SGD, {"momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}),
                ("paper", "3d"): (torch.optim.SGD, {"momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}),
                ("default", "vfn"): (torch.optim.SGD, {"momentum": 0.9, "nesterov": False, "weight_decay": 1e-5}),
                ("quick", "vfn"): (torch.optim.AdamW, {"weight_decay": 3e-5})}
    for (preset, network), (kind, settings) in expected.items():
        config = TrainingConfig.from_schedule(plan.schedule(preset, network), seed=plan.training.seed)
        optimizer = config.optimizer(weight, config.lr)
        assert type(optimizer) is kind and config.seed == 12345
        assert {k: optimizer.param_groups[0][k] for k in settings} == settings
    vfn = TrainingConfig.from_schedule(plan.schedule("default", "vfn"))
    assert isinstance(vfn.lr_schedule, StepLR) and vfn.lr_schedule.milestones == [2000, 2500]
    assert vfn.grad_clip is None and vfn.validate_at_start
    views = TrainingConfig.from_schedule(plan.schedule("default", "2d"), iterations=10)
    assert isinstance(views.lr_schedule, PolyLR) and views.lr_schedule.iterations == 10
    assert views.lr_schedule.exponent == 0.9 and views.grad_clip == 12.0 and not views.validate_at_start


def test_the_3d_stride_and_mirroring_reach_prediction(monkeypatch):
    data = synthetic_plan()
    data["unet3d"]["stride"] = [3, 5, 7]
    data["unet3d"]["mirror_axes"] = [2]
    seen = []

    def record(network, image, patch_size, stride, device, batch_size, mirror_axes, quiet):
        seen.append((list(stride), list(mirror_axes)))
        return np.zeros((3, *image.shape[1:]), np.float32)

    monkeypatch.setattr(prediction_models, "predict_volume_3d", record)
    models = prediction_models.UNet3DModels(Plan(data), ["0"], torch.device("cpu"), networks=[None])
    image = np.zeros((1, 4, 4, 4), np.float32)
    models.probabilities(image, tta=True)
    models.probabilities(image)
    models.step_size = 0.25
    models.probabilities(image)
    patch = data["unet3d"]["patch_size"]
    assert seen == [([3, 5, 7], [2]), ([3, 5, 7], []), ([round(p / 4) for p in patch], [])]


def test_a_misspelled_schedule_override_is_refused(demo_preprocessed):
    with pytest.raises(PlanError) as error:
        prepare_unit(None, "3d", "3d", "0", "default", "cpu", schedule_overrides={"iteratons": 3})
    assert str(error.value) == "3d unit 0: unknown key 'schedule.iteratons' (did you mean 'iterations'?)"


@pytest.mark.usefixtures("one_torch_thread")
def test_the_plans_seed_fraction_and_optimizer_reach_the_trainer(demo_preprocessed):
    out = fit_2d_unit(None, "axial", "0", device="cpu", quiet=True, schedule_overrides=TINY_2D, features=[4, 8])
    first = read_json(out / "unit.json")
    cases = first["train_cases"] + first["val_cases"]
    assert len(first["val_cases"]) == max(1, round(0.15 * len(cases)))
    state = torch.load(out / "checkpoint_final.pth", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.99, True, 3e-5)
    assert state["config"]["seed"] == 12345 and state["config"]["lr_schedule"] == "PolyLR"
    assert first["schedule"]["optimizer"] == "sgd" and first["schedule"]["val_batches"] == 1

    plans = demo_preprocessed / "plans.json"
    plan = read_json(plans)
    plan["training"] = {"seed": 7, "validation_fraction": 0.5}
    plan["presets"]["default"]["2d"].update(momentum=0.9, nesterov=False)
    write_json(plans, plan)
    out = fit_2d_unit(None, "axial", "0", device="cpu", quiet=True, schedule_overrides=TINY_2D, features=[4, 8])
    second = read_json(out / "unit.json")
    assert sorted(second["train_cases"] + second["val_cases"]) == sorted(cases)
    assert len(second["val_cases"]) == round(0.5 * len(cases)) > len(first["val_cases"])
    state = torch.load(out / "checkpoint_final.pth", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["nesterov"]) == (0.9, False) and state["config"]["seed"] == 7


def test_new_plans_guard_the_vfn_prior_and_older_plans_keep_any_gain(demo_preprocessed):
    """New plans: the VFN validates on at least 5 cases and keeps a trained checkpoint only when its
    cases gain 2 standard errors (no fixed margin), without map jitter or sorted views; a plan written
    before these keys reads 0 (the share alone, any gain, no jitter, no test, views by name)."""
    data = read_json(demo_preprocessed / "plans.json")
    keys = ("validation_cases", "min_gain", "map_jitter", "min_gain_se", "view_symmetric")
    assert [data["vfn"].get(key) for key in keys] == [5, None, None, 2.0, None]  # the others left at their default
    assert [getattr(Plan(data).vfn, key) for key in keys] == [5, 0.0, 0.0, 2.0, False]
    for key in ("validation_cases", "min_gain_se"):
        del data["vfn"][key]
    older = Plan(data)
    assert [getattr(older.vfn, key) for key in keys] == [0, 0.0, 0.0, 0.0, False]
    for key in keys[1:]:
        bad = {**data, "vfn": {**data["vfn"], key: -1}}
        with pytest.raises(PlanError, match=key):
            Plan(bad)
