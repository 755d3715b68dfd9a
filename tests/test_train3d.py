"""3D U-Net baseline: patches, a trained unit's records and maps, crossval's 3d row, vfnet_predict --model 3d."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from vfnet import paths
from vfnet.atomic import write_json
from vfnet.errors import ModelNotFoundError, PlanError
from vfnet.evaluation.crossval import crossval
from vfnet.experiment_planning.plans import Plan
from vfnet.inference.predict3d import load_unit_network_3d
from vfnet.pipeline.units import train_3d_unit
from vfnet.prediction.models import load_3d_models
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.data2d import crop_padded
from vfnet.training.data3d import load_volumes, make_train_loader_3d
from vfnet.views import VIEWS
from vfnet_cli.predict import predict_entry
from vfnet_cli.train import train_entry

TINY = {"iterations": 4, "val_every": 2, "batch_size": 2, "num_workers": 0, "val_batches": 1}
TASK = "Task099_DemoOrgans"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_crop_pads_outside_the_volume():
    array = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    crop = crop_padded(array, [-1, 2, 1], [4, 4, 3], fill=-7)
    assert crop.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(crop[:, 1:, :2], array[:, :, 2:, 1:4])
    assert (crop[:, 0] == -7).all() and (crop[:, :, 2:] == -7).all()


def test_patches_have_the_planned_size_and_a_foreground_share(demo_preprocessed):
    data = PreprocessedDataset(demo_preprocessed)
    patch = [p + 8 for p in Plan.load(demo_preprocessed)["unet3d"]["patch_size"]]  # larger than the volumes
    batch = next(make_train_loader_3d(load_volumes(data, data.all_cases[:3]), patch, 3, num_workers=0,
                                      augment=False))
    assert batch["data"].shape == (3, 1, *patch) and batch["target"].shape == (3, 1, *patch)
    assert batch["target"][-1].max() > 0  # the last third is centred on foreground


def test_3d_unit_trains_on_other_folds_and_predicts_its_own(demo_preprocessed):
    out = train_3d_unit(None, "1", preset="quick", device="cpu", quiet=True, schedule_overrides=TINY,
                        features=[4, 8])
    assert out == paths.unit_dir(paths.results_root() / TASK, "quick", "3d", "1")
    splits = json.loads((demo_preprocessed / "splits.json").read_text())["folds"]
    record = json.loads((out / "unit.json").read_text())
    others = set(splits["0"]) | set(splits["2"]) | set(splits["3"])
    assert set(record["predict_cases"]) == set(splits["1"])
    assert set(record["train_cases"]) | set(record["val_cases"]) == others
    assert record["val_cases"] and not set(record["train_cases"]) & set(record["val_cases"])
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "training.log"):
        assert (out / name).is_file()
    data = PreprocessedDataset(demo_preprocessed)
    for case in splits["1"]:
        probs = np.load(out / "predictions" / f"{case}.npz")["probabilities"]
        assert probs.dtype == np.float16 and probs.shape == (3, *data.load(case)[1].shape)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=2e-2)
    summary = json.loads((out / "summary.json").read_text())
    network = load_unit_network_3d(out, Plan.load(demo_preprocessed))
    assert network.features == [4, 8]
    assert summary["parameters"] == sum(p.numel() for p in network.parameters())
    assert set(summary["cases"]) == set(splits["1"]) and 0 <= summary["mean_dice"] <= 1
    assert summary["seconds_per_case"] > 0 and summary["iterations"] == 4

    # vfnet_predict --model 3d with this unit; a unit that was never trained names the command to train it
    images = demo_preprocessed.parents[1] / "vfnet_raw" / TASK / "imagesTs"
    target = demo_preprocessed.parents[1] / "predicted"
    result = CliRunner().invoke(predict_entry, ["-i", str(images), "-o", str(target), "--model", "3d", "-f", "1",
                                                "--preset", "quick", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    for source in sorted(images.iterdir()):
        written = sitk.ReadImage(str(target / source.name.replace("_0000", "")))
        original = sitk.ReadImage(str(source))
        assert written.GetSize() == original.GetSize() and written.GetSpacing() == original.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1, 2}
    missing = CliRunner().invoke(predict_entry, ["-i", str(images), "-o", str(target / "x"), "--model", "3d",
                                                 "--preset", "quick"])
    assert missing.exit_code == 2 and f"vfnet_train 3d 0 -d {TASK} --preset quick" in missing.output
    with pytest.raises(PlanError, match="0, 1, 2, 3, all"):
        load_3d_models(None, "quick", ["holdout"], device="cpu")


def test_unknown_3d_unit_lists_the_valid_ones(demo_preprocessed):
    result = CliRunner().invoke(train_entry, ["3d", "nope", "--preset", "quick"])
    assert result.exit_code == 2 and "0, 1, 2, 3, all" in result.output and "Traceback" not in result.output
    usage = CliRunner().invoke(train_entry, ["3d", "0", "1"])
    assert usage.exit_code == 2 and "3d takes UNIT" in usage.output


def test_missing_3d_model_names_the_training_command(demo_preprocessed):
    train_3d_unit(None, "0", preset="quick", device="cpu", quiet=True, schedule_overrides=TINY, features=[4, 8],
                  stop_at=2)  # started, not finished: no final checkpoint
    with pytest.raises(ModelNotFoundError, match=f"vfnet_train 3d 0 -d {TASK} --preset quick"):
        load_3d_models(None, "quick", device="cpu")


def _one_hot(label: np.ndarray, num_classes: int = 3) -> np.ndarray:
    return np.stack([(label == c) for c in range(num_classes)]).astype(np.float16)


def test_crossval_has_a_3d_row_with_the_recorded_time(demo_preprocessed):
    data = PreprocessedDataset(demo_preprocessed)
    results = paths.results_root() / TASK
    for fold in data.fold_names:
        for case in data.fold_cases([fold]):
            label = np.asarray(data.load(case)[1])
            eroded = label.copy()
            eroded[: label.shape[0] // 2] = 0  # the views miss the lower half of every organ
            for view in VIEWS:
                folder = paths.unit_dir(results, "quick", f"2d_{view}", fold) / "predictions"
                folder.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(folder / f"{case}.npz", probabilities=_one_hot(eroded))
            folder = paths.unit_dir(results, "quick", "3d", fold) / "predictions"
            folder.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(folder / f"{case}.npz", probabilities=_one_hot(label))
        write_json(folder.parent / "summary.json", {"seconds_per_case": 0.25})
    table = crossval(None, "quick", device="cpu", quiet=True)
    assert "3d" in table["methods"] and "3d+pp" in table["methods"]
    assert table["summary"]["3d"]["overall"]["mean"] == pytest.approx(1.0)
    assert table["summary"]["majority"]["overall"]["mean"] < 0.9
    assert table["summary"]["3d"]["seconds_per_case"] == pytest.approx(0.25)
    assert table["best"]["method"] != "3d"  # the recorded default for vfnet_predict is a fusion method
    assert "| 3d |" in (results / "quick" / "crossval" / "crossval.md").read_text()
