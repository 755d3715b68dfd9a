"""2D view networks: trainer, resume, slice sampling, whole-volume prediction, units, CLI."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vfnet import paths
from vfnet.errors import PlanError, VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.experiment_planning.schema import TrainingPlan
from vfnet.inference import predict2d
from vfnet.inference.predict2d import load_unit_network, predict_volume_2d, slice_batch_size
from vfnet.networks.unet2d import UNet2D
from vfnet.pipeline.units import train_2d_unit
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.config import StepLR
from vfnet.training.data2d import fixed_batches, load_view_volumes, make_train_loader
from vfnet.training.losses import DiceCELoss, SoftDiceLoss
from vfnet.training.trainer import Trainer, TrainingConfig
from vfnet.training.units import split_validation, validation_count
from vfnet.views import VIEWS, slice_stacks
from vfnet_cli.train import train_all_entry, train_entry

TINY = {"iterations": 4, "val_every": 2, "batch_size": 4, "num_workers": 0, "val_batches": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainer(folder, out_dir, iterations=40, val_every=10, seed=0):
    data = PreprocessedDataset(folder)
    plan = Plan.load(folder)
    spec = plan["views"]["axial"]
    cases = data.all_cases
    volumes = load_view_volumes(data, cases[:6], "axial")
    loader = make_train_loader(volumes, spec["patch_size"], 3, 8, num_workers=0)
    val = fixed_batches(load_view_volumes(data, cases[6:], "axial"), spec["patch_size"], 3, 8, 2)
    torch.manual_seed(seed)
    network = UNet2D(spec["in_channels"], plan.num_classes, [8, 16])
    config = TrainingConfig(iterations=iterations, lr=0.01, val_every=val_every)
    return Trainer(network, DiceCELoss(), loader, val, config, out_dir, device="cpu", quiet=True)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_loss_falls_on_a_tiny_problem(demo_preprocessed, tmp_path):
    history = _trainer(demo_preprocessed, tmp_path / "run").fit()
    assert [h["iteration"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert all(0 <= h["data_wait"] <= 1 for h in history)
    assert (tmp_path / "run" / "progress.png").stat().st_size > 0
    assert "pseudo-Dice" in (tmp_path / "run" / "training.log").read_text()


def test_resume_restores_exact_state_and_finishes(demo_preprocessed, tmp_path):
    out = tmp_path / "run"
    first = _trainer(demo_preprocessed, out, iterations=30, val_every=10)
    first.fit(stop_at=20)
    assert first.iteration == 20 and not (out / "checkpoint_final.pth").exists()
    saved = torch.load(out / "checkpoint_latest.pth", weights_only=True)
    assert saved["iteration"] == 20

    second = _trainer(demo_preprocessed, out, iterations=30, val_every=10, seed=99)
    assert not torch.equal(next(iter(second.network.state_dict().values())),
                           next(iter(saved["network"].values())))
    assert second.resume()
    assert second.iteration == 20
    _assert_same(second.network.state_dict(), saved["network"])
    _assert_same(second.optimizer.state_dict(), saved["optimizer"])
    _assert_same(second.scheduler.state_dict(), saved["scheduler"])
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    np.testing.assert_array_equal(np.random.get_state()[1], saved["rng"]["numpy"][1])
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert [h["iteration"] for h in second.history] == [10, 20]

    history = second.fit()
    assert second.iteration == 30 and [h["iteration"] for h in history] == [10, 20, 30]
    final = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert final["iteration"] == 30
    _assert_same(final["network"], second.network.state_dict())


def test_step_schedule_divides_by_ten_at_two_thirds_and_five_sixths():
    schedule = StepLR(600)
    assert [schedule(i) for i in (0, 399, 400, 499, 500, 599)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_soft_dice_is_zero_for_perfect_and_sigmoid_for_one_channel():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = 50 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert float(SoftDiceLoss()(perfect, target)) < 1e-3
    binary = (target > 0).long()
    assert float(SoftDiceLoss()(100 * (2 * binary[:, None].float() - 1), binary)) < 1e-3


def test_sampler_batches_and_foreground_oversampling(demo_preprocessed):
    data = PreprocessedDataset(demo_preprocessed)
    volumes = load_view_volumes(data, data.all_cases[:3], "sagittal")
    patch = Plan.load(demo_preprocessed)["views"]["sagittal"]["patch_size"]
    batch = next(make_train_loader(volumes, patch, 3, 9, num_workers=0, augment=False))
    assert batch["data"].shape == (9, 3, *patch) and batch["target"].shape == (9, 1, *patch)
    # the last third of every batch is centred on foreground
    assert all(batch["target"][i].max() > 0 for i in range(6, 9))


def test_slice_stacks_are_channel_major_with_clamped_context():
    image = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)
    stacks = slice_stacks(image, [0, 3], 3)
    assert stacks.shape == (2, 6, 3, 2)
    np.testing.assert_array_equal(stacks[0], image[:, [0, 0, 1]].reshape(6, 3, 2))
    np.testing.assert_array_equal(stacks[1], image[:, [2, 3, 3]].reshape(6, 3, 2))


class _CentreSliceLogit(nn.Module):
    """Logits (0, 10·centre slice): class-1 probability is sigmoid(10·image), whatever the view."""

    def forward(self, x):
        centre = x[:, 1:2]
        return torch.cat([torch.zeros_like(centre), 10 * centre], dim=1)


@pytest.mark.parametrize("view", VIEWS)
def test_probability_maps_have_volume_shape_and_sum_to_one(view):
    image = np.random.default_rng(1).normal(size=(1, 7, 13, 11)).astype(np.float32)
    network = UNet2D(3, 3, [4, 8, 16]).eval()  # 2 poolings: 13 and 11 need padding inside
    probs = predict_volume_2d(network, image, view, 3, "cpu", batch_size=4)
    assert probs.shape == (3, 7, 13, 11) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    restacked = predict_volume_2d(_CentreSliceLogit(), image, view, 3, "cpu", batch_size=5)
    np.testing.assert_allclose(restacked[1], 1 / (1 + np.exp(-10 * image[0])), rtol=1e-5, atol=1e-6)


def _free_memory(monkeypatch, gib: float) -> None:
    monkeypatch.setattr(predict2d.psutil, "virtual_memory", lambda: SimpleNamespace(available=int(gib * 2**30)))


def test_slice_batch_shrinks_with_larger_slices_and_less_memory(monkeypatch):
    network = UNet2D(3, 3, [32, 64, 128])
    _free_memory(monkeypatch, 16)
    small, large = slice_batch_size(network, (64, 64)), slice_batch_size(network, (512, 512))
    # 12 × 32 channels × 512² × 4 bytes per slice, a quarter of 16 GiB
    assert large == 10 and small == 256  # 64² would allow 682: clamped
    assert slice_batch_size(network, (256, 256)) == 42
    assert slice_batch_size(network, (253, 254)) == 42  # padded to the network's multiple of 4
    _free_memory(monkeypatch, 2)
    assert slice_batch_size(network, (512, 512)) == 1 < large
    assert slice_batch_size(network, (256, 256)) == 5
    _free_memory(monkeypatch, 0.01)
    assert slice_batch_size(network, (512, 512)) == 1  # never below one slice


def test_batch_size_does_not_change_probabilities(monkeypatch):
    torch.manual_seed(0)
    image = np.random.default_rng(2).normal(size=(1, 9, 20, 18)).astype(np.float32)
    network = UNet2D(3, 3, [4, 8, 16]).eval()
    _free_memory(monkeypatch, 1e-4)  # the memory-derived default: 1 slice per pass
    one = predict_volume_2d(network, image, "coronal", 3, "cpu")
    _free_memory(monkeypatch, 64)
    assert slice_batch_size(network, (9, 18)) == 256
    np.testing.assert_allclose(predict_volume_2d(network, image, "coronal", 3, "cpu"), one, atol=1e-5)
    np.testing.assert_allclose(predict_volume_2d(network, image, "coronal", 3, "cpu", batch_size=7), one, atol=1e-5)


def test_cca_unit_records_cases_and_predicts_both_folds(demo_preprocessed):
    out = train_2d_unit(None, "coronal", "cca_0_1", preset="quick", quiet=True, schedule_overrides=TINY,
                        features=[4, 8])
    splits = json.loads((demo_preprocessed / "splits.json").read_text())["folds"]
    record = json.loads((out / "unit.json").read_text())
    left_out = set(splits["0"]) | set(splits["1"])
    training_folds = set(splits["2"]) | set(splits["3"])
    assert not left_out & set(record["train_cases"] + record["val_cases"])
    assert record["val_cases"] and set(record["val_cases"]) <= training_folds
    assert set(record["train_cases"]) | set(record["val_cases"]) == training_folds
    assert set(record["predict_cases"]) == left_out
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "progress.png", "training.log"):
        assert (out / name).is_file()
    assert (out.parents[2] / "plans.json").is_file()  # results folder is self-contained
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cases"]) == left_out and 0 <= summary["mean_dice"] <= 1
    data = PreprocessedDataset(demo_preprocessed)
    for case in left_out:
        probs = np.load(out / "predictions" / f"{case}.npz")["probabilities"]
        assert probs.dtype == np.float16 and probs.shape == (3, *data.load(case)[1].shape)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=2e-2)
    # the final checkpoint reloads with the tiny widths it was trained with
    assert load_unit_network(out, Plan.load(demo_preprocessed), "coronal").features == [4, 8]


def test_resume_of_a_finished_unit_leaves_it_alone(demo_preprocessed):
    out = train_2d_unit(None, "axial", "0", preset="quick", quiet=True, schedule_overrides=TINY, features=[4, 8])
    stamp = (out / "checkpoint_final.pth").stat().st_mtime_ns
    result = CliRunner().invoke(train_entry, ["2d", "axial", "0", "--preset", "quick", "--continue", "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint_final.pth").stat().st_mtime_ns == stamp


def test_validation_split_is_seeded_and_never_empty():
    cases = [f"c{i}" for i in range(20)]
    training = TrainingPlan(seed=12345, validation_fraction=0.15)
    train, val = split_validation(cases, "0", training)
    assert len(val) == 3 and not set(train) & set(val) and set(train) | set(val) == set(cases)
    assert split_validation(cases, "0", training) == (train, val)
    assert len(split_validation(cases[:3], "x", training)[1]) == 1


def test_a_validation_minimum_takes_more_cases_but_never_more_than_half():
    """The VFN's ``validation_cases``: 15 fusion-set cases validate on 5, not the share's 2; 6 cases on 3."""
    training = TrainingPlan(seed=12345, validation_fraction=0.15)
    assert [validation_count(n, 0.15, 5) for n in (1, 2, 6, 15, 150)] == [1, 1, 3, 5, 22]
    assert validation_count(15, 0.15) == 2
    cases = [f"c{i}" for i in range(15)]
    train, val = split_validation(cases, "vfn-0", training, minimum=5)
    assert len(val) == 5 and len(train) == 10 and set(train) | set(val) == set(cases)


def test_unknown_view_and_unit_list_the_valid_ones(demo_preprocessed):
    with pytest.raises(VfnetError, match="axial, coronal, sagittal"):
        train_2d_unit(None, "transverse", "0")
    with pytest.raises(PlanError, match="cca_0_1"):
        train_2d_unit(None, "axial", "7")
    result = CliRunner().invoke(train_entry, ["2d", "axial", "nope"])
    assert result.exit_code == 2 and "cca_2_3" in result.output and "Traceback" not in result.output


def test_print_jobs_lists_every_unit_of_a_cca_plan_stage_by_stage(demo_preprocessed):
    result = CliRunner().invoke(train_all_entry, ["--print-jobs", "--preset", "quick", "--stage", "2d"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    k = 4
    assert lines[0] == "# stage 1: 2D view units (independent)"
    lines = lines[1:]
    assert len(lines) == 3 * (k + k * (k - 1) // 2 + 1)
    assert "vfnet_train 2d axial cca_0_1 -d Task099_DemoOrgans --preset quick" in lines
    assert all(line.startswith("vfnet_train 2d ") for line in lines)
    # a fixed schedule lists everything: 2D and 3D units first (independent), then the fusion sets, then the
    # VFN of every test fold, with and without image, and the deployment VFN, then crossval
    everything = CliRunner().invoke(train_all_entry, ["--print-jobs", "--preset", "default"]).output.splitlines()
    stage_lines = [i for i, line in enumerate(everything) if line.startswith("# stage")]
    assert len(stage_lines) == 4
    first = everything[1:stage_lines[1]]
    assert first[:len(lines)] == [line.replace("quick", "default") for line in lines]
    assert first[len(lines):] == [f"vfnet_train 3d {u} -d Task099_DemoOrgans --preset default"
                                  for u in ["0", "1", "2", "3", "all"]]
    units = ["0", "1", "2", "3", "all"]
    assert everything[stage_lines[1] + 1:stage_lines[2]] == [
        f"vfnet_build_fusion_set -d Task099_DemoOrgans -f {u} --preset default" for u in units]
    assert everything[stage_lines[2] + 1:stage_lines[3]] == (
        [f"vfnet_train vfn {u} -d Task099_DemoOrgans --preset default" for u in units]
        + [f"vfnet_train vfn {u} --no-image -d Task099_DemoOrgans --preset default" for u in units[:-1]])
    assert everything[stage_lines[3] + 1:] == ["vfnet_crossval -d Task099_DemoOrgans --preset default"]
    axial = CliRunner().invoke(train_all_entry, ["--print-jobs", "--views", "axial", "--stage", "2d"])
    assert len(axial.output.strip().splitlines()) == 1 + k + k * (k - 1) // 2 + 1


@pytest.mark.realdata
def test_hippocampus_axial_unit_on_a_handful_of_cases(shared_data, vfnet_env):
    from dataset_conversion.msd import convert_msd
    from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess

    source = shared_data / "Task04_Hippocampus"
    subset = vfnet_env / "source" / "Task04_Hippocampus"
    meta = json.loads((source / "dataset.json").read_text())
    meta["training"] = meta["training"][:8]
    meta["numTraining"] = 8
    for entry in meta["training"]:
        for key in ("image", "label"):
            target = subset / entry[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / entry[key], target)
    (subset / "dataset.json").write_text(json.dumps(meta))
    convert_msd(subset, quiet=True)
    plan_and_preprocess("Task04", num_processes=1, quiet=True)
    out = train_2d_unit("Task04", "axial", "0", preset="quick", quiet=True, schedule_overrides=TINY)
    record = json.loads((out / "unit.json").read_text())
    data = PreprocessedDataset(paths.preprocessed_dataset("Task04"))
    assert len(record["predict_cases"]) == 2
    for case in record["predict_cases"]:
        probs = np.load(out / "predictions" / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *data.load(case)[1].shape)
    assert (out / "checkpoint_final.pth").is_file() and (out / "summary.json").is_file()
    assert load_unit_network(out, Plan.load(data.folder), "axial").features == [32, 64, 128, 256]


def test_a_finished_unit_is_never_destroyed_by_a_new_run(demo_preprocessed):
    out = train_2d_unit(None, "axial", "0", preset="quick", quiet=True, schedule_overrides=TINY, features=[4, 8])
    final = (out / "checkpoint_final.pth").read_bytes()
    refused = CliRunner().invoke(train_entry, ["2d", "axial", "0", "--preset", "quick", "-q"])
    assert refused.exit_code == 2 and "already trained" in refused.output and "--overwrite" in refused.output
    assert (out / "checkpoint_final.pth").read_bytes() == final and (out / "summary.json").is_file()
    again = train_2d_unit(None, "axial", "0", preset="quick", quiet=True, schedule_overrides={**TINY, "iterations": 6},
                          features=[4, 8], overwrite=True)
    assert again == out and not out.with_name("0.overwrite").exists() and not out.with_name("0.old").exists()
    assert json.loads((out / "unit.json").read_text())["schedule"]["iterations"] == 6
    assert (out / "summary.json").is_file() and (out / "predictions").is_dir()
