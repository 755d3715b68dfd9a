"""What lets fusion learn and deploy as cross-validated: the stack method, paired fold fusion, whole-case
VFN validation from iteration 0, no mirroring that swaps sides, and test-time augmentation only when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfnet.errors import PlanError, VfnetError
from vfnet.fusion.methods import fuse, fused_probabilities, majority_vote, vfn_fused_probabilities, vfn_input
from vfnet.fusion.roi import roi_from_mask
from vfnet.fusion.stack import fit_stack, stack_probabilities
from vfnet.networks.vfn import VolumetricFusionNet, vfn_probabilities
from vfnet.prediction.models import tta_axes
from vfnet.training.data2d import augmentation_2d
from vfnet.training.data_vfn import VfnPatchSampler, tile_batches
from vfnet.training.trainer import Trainer, TrainingConfig
from vfnet.views import VIEWS

torch.set_num_threads(1)


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[labels].transpose(3, 0, 1, 2)


def _views_with_one_good(label: np.ndarray, k: int, rng) -> dict[str, np.ndarray]:
    """The axial view is right; coronal and sagittal each flip a third of the voxels to a random class."""
    maps = {}
    for view in VIEWS:
        labels = label.copy()
        if view != "axial":
            noisy = rng.random(label.shape) < 0.33
            labels[noisy] = rng.integers(0, k, noisy.sum())
        maps[view] = 0.1 / k + 0.9 * _one_hot(labels, k)
    return maps


def _fitted_stack(folder, k: int, rng) -> dict:
    """A stack fitted on three cases whose axial view is right and the others noisy (fusion-set files in ``folder``)."""
    cases = []
    for i in range(3):
        label = np.zeros((8, 12, 12), np.int64)
        label[2:6, 3:9, 2:6] = 1
        label[2:6, 3:9, 7:11] = k - 1
        maps = _views_with_one_good(label, k, rng)
        inputs = np.concatenate([rng.random((1, *label.shape))] + [maps[v][1:] for v in VIEWS]).astype(np.float16)
        np.savez(folder / f"c{i}.npz", inputs=inputs, label=label.astype(np.uint8))
        cases.append(f"c{i}")
    return fit_stack(folder, cases, num_image_channels=1, num_classes=k, seed=12345, max_voxels=200_000)


def test_stack_learns_to_trust_the_reliable_view(tmp_path):
    rng = np.random.default_rng(0)
    k = 3
    weights = _fitted_stack(tmp_path, k, rng)
    assert weights["loss"] < weights["loss_start"]
    label = np.zeros((8, 12, 12), np.int64)
    label[1:7, 2:10, 1:5] = 2
    test = _views_with_one_good(label, k, rng)
    probabilities = stack_probabilities(test, weights)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    stacked = fuse("stack", test, model=weights)
    assert (stacked == label).mean() > 0.99
    assert (stacked == label).mean() > (fuse("mean", test) == label).mean()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_stack_probabilities_and_labels_are_the_logistic_regression_of_the_views_logs(dtype):
    # the stack's definition written out: softmax over c of sum_v sum_k W[c, v, k] log clip(p_v(k)) + b[c];
    # its labels (taken from the logits) are the argmax of those probabilities
    rng = np.random.default_rng(3)
    k = 4
    maps = {}
    for view in VIEWS:
        raw = rng.random((k, 5, 6, 7)) ** 4  # some probabilities below the clip
        maps[view] = (raw / raw.sum(0)).astype(dtype)
    weights = {"weight": rng.normal(size=(k, 3 * k)).tolist(), "bias": rng.normal(size=k).tolist()}
    w = np.array(weights["weight"]).reshape(k, 3, k)
    logs = np.stack([np.log(np.clip(maps[v].astype(np.float64), 1e-4, 1.0)) for v in VIEWS])  # (3, k, z, y, x)
    logits = np.einsum("cvk,vkzyx->czyx", w, logs) + np.array(weights["bias"])[:, None, None, None]
    expected = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    before = {view: m.copy() for view, m in maps.items()}
    probabilities = stack_probabilities(maps, weights)
    for view in VIEWS:
        np.testing.assert_array_equal(maps[view], before[view])  # the views' maps are read, not changed
    assert probabilities.shape == (k, 5, 6, 7) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    labels = fuse("stack", maps, model=weights)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected.argmax(0))
    assert len(np.unique(labels)) == k  # every class wins somewhere, so the argmax was tested for each
    with pytest.raises(VfnetError, match="sagittal missing"):
        fuse("stack", {view: maps[view] for view in VIEWS[:2]}, model=weights)


@pytest.mark.parametrize("k", [2, 3])
def test_an_untrained_vfn_with_the_stack_prior_is_the_stack(tmp_path, k):
    # one organ (a sigmoid head) and several (softmax): the prior's logits are the stack's
    rng = np.random.default_rng(1)
    weights = _fitted_stack(tmp_path, k, rng)
    label = np.zeros((8, 12, 12), np.int64)
    label[1:7, 2:10, 1:5] = k - 1
    maps = _views_with_one_good(label, k, rng)
    net = VolumetricFusionNet(1, k, True, [4, 8, 16, 32], view_prior="stack").eval()
    x = torch.from_numpy(vfn_input(rng.random((1, *label.shape)).astype(np.float32), maps))[None]
    with torch.no_grad():
        before = vfn_probabilities(net(x))[0].numpy()
        net.set_stack_prior(weights)
        after = vfn_probabilities(net(x))[0].numpy()
    np.testing.assert_allclose(after, stack_probabilities(maps, weights), atol=1e-4)
    assert np.abs(before - after).max() > 0.05  # the fitted weights, not the equal ones, made it the stack


def test_vfn_fused_probabilities_are_background_outside_the_roi_as_vfn_fusion_labels_it():
    """Outside its ROI the VFN's probabilities are background, as crossval's VFN labels are, also where the
    views' mean would say foreground; inside it they are the VFN's. Their argmax is the labels crossval scored."""
    label = np.zeros((12, 12, 12), np.int64)
    label[4:8, 4:8, 4:8] = 1
    maps = {v: 0.05 + 0.9 * _one_hot(label, 2) for v in VIEWS}
    # a far corner where one view is sure of the organ and two lean to background: the mean says organ
    # (0.64), the majority vote background, so it stays outside the vote's ROI
    for view, organ in zip(VIEWS, (0.99, 0.46, 0.46)):
        maps[view][:, :2, :2, :2] = np.array([1 - organ, organ])[:, None, None, None]

    class Constant(torch.nn.Module):
        use_image = False

        def forward(self, x):
            return torch.full((x.shape[0], 1, *x.shape[2:]), 5.0)  # foreground everywhere it looks

    config = {"patch_size": [8, 8, 8], "stride": [4, 4, 4], "roi_margin": [1, 1, 1]}
    fused = vfn_fused_probabilities(maps, None, Constant(), config, use_image=False)
    roi = roi_from_mask(majority_vote(maps), [1, 1, 1], [8, 8, 8])
    inside = np.zeros(label.shape, bool)
    inside[roi] = True
    assert not inside[:2, :2, :2].any() and fuse("mean", maps)[:2, :2, :2].all()
    assert fused[1][inside].min() > 0.99
    assert (fused[0][~inside] == 1).all() and (fused[1][~inside] == 0).all()
    np.testing.assert_array_equal(np.argmax(fused, axis=0), fuse("vfn-noimage", maps, None, Constant(), config))
    # averaging two folds' fused maps is what deployment does; equal maps average to themselves
    np.testing.assert_allclose((fused + fused) / 2, fused_probabilities("vfn-noimage", maps, None, Constant(),
                                                                        config), atol=1e-6)
    with pytest.raises(Exception, match="no probabilities"):
        fused_probabilities("majority", maps)


def test_vfn_validation_tiles_cover_every_case():
    rng = np.random.default_rng(0)
    samples = [(rng.random((4, 10, 20, 13)).astype(np.float16), np.ones((10, 20, 13), np.uint8)),
               (rng.random((4, 6, 6, 6)).astype(np.float16), np.ones((6, 6, 6), np.uint8))]
    sampler = VfnPatchSampler(samples, [8, 8, 8], [1, 1, 1], num_image_channels=1, num_foreground=1,
                              batch_size=2, augment=False)
    batches = tile_batches(sampler, 3)
    tiles = sum(len(b["data"]) for b in batches)
    assert tiles == 2 * 3 * 2 + 1  # 10x20x13 needs 2x3x2 tiles of 8; the small case one padded tile
    assert all(b["data"].shape[1:] == (4, 8, 8, 8) for b in batches)
    # the foreground of both cases is covered: tiles hold at least every labelled voxel
    assert sum(int(b["target"].sum()) for b in batches) >= 10 * 20 * 13 + 6 * 6 * 6
    # each tile names its case: 12 tiles of the first, 1 of the second, in order
    cases = np.concatenate([b["case"] for b in batches])
    assert cases.tolist() == [0] * 12 + [1]


def test_validation_scores_each_named_case_as_well_as_all_of_them(tmp_path):
    """Batches that name their cases give each case's pseudo-Dice beside the pooled one: a case whose
    tiles are all right scores 1, one with half its foreground missed 2/3, whichever batches hold them."""
    net = torch.nn.Conv3d(2, 2, 1)
    with torch.no_grad():  # the data are the logits
        net.weight.copy_(torch.eye(2).view(2, 2, 1, 1, 1))
        net.bias.zero_()

    def tile(foreground: int, predicted: int):
        data = np.zeros((2, 2, 2, 2), np.float32)
        target = np.zeros((1, 2, 2, 2), np.int64)
        target.reshape(-1)[:foreground] = 1
        data[1].reshape(-1)[:predicted] = 1.0
        data[0].reshape(-1)[predicted:] = 1.0
        return data, target

    tiles = [(tile(4, 4), 0), (tile(4, 2), 1), (tile(2, 2), 0), (tile(4, 2), 1)]
    batches = [{"data": np.stack([t[0][0] for t in tiles[i:i + 3]]), "target": np.stack([t[0][1] for t in tiles[i:i + 3]]),
                "case": np.array([t[1] for t in tiles[i:i + 3]])} for i in (0, 3)]

    def loss(logits, target):
        return torch.nn.functional.cross_entropy(logits, target[:, 0])

    trainer = Trainer(net, loss, iter(lambda: batches[0], None), batches, TrainingConfig(iterations=1), tmp_path,
                      device="cpu", quiet=True)
    _, pooled = trainer.validate()
    assert trainer.case_dice == pytest.approx([1.0, 2 * 4 / (2 * 4 + 4)])
    assert pooled == pytest.approx(2 * 10 / (2 * 10 + 4))  # TP 6 + 4, FN 4 over both cases
    _, plain = Trainer(net, loss, iter(lambda: batches[0], None), [{k: b[k] for k in ("data", "target")} for b in batches],
                       TrainingConfig(iterations=1), tmp_path / "plain", device="cpu", quiet=True).validate()
    assert plain == pytest.approx(pooled)


def test_clears_standard_error():
    from vfnet.training.trainer import clears_standard_error

    assert clears_standard_error([0.02, 0.021, 0.019], 2.0)
    assert not clears_standard_error([0.05, -0.04, 0.03, -0.02], 1.0)  # mean 0.005, standard error 0.023
    assert clears_standard_error([0.05, -0.04, 0.03, -0.02], 0.2)
    assert not clears_standard_error([-0.01, -0.01], 0.0) and not clears_standard_error([0.0, 0.0], 0.0)
    assert clears_standard_error([0.01], 5.0) and not clears_standard_error([-0.01], 0.0)


@pytest.mark.parametrize("min_gain_se, kept", [(0.0, [True, True, True, False]), (1.0, [True, False, True, False])])
def test_a_trained_checkpoint_needs_gains_clear_of_their_standard_error(tmp_path, monkeypatch, min_gain_se, kept):
    """With min_gain_se a trained checkpoint that beats iteration 0 pooled, but on cases whose gains
    scatter around zero, is not kept; one whose cases all gain a little is."""
    from vfnet.checkpoint import load_checkpoint

    trainer = _constant_batch_trainer(tmp_path, TrainingConfig(iterations=6, val_every=2, validate_at_start=True, min_gain_se=min_gain_se))
    start = np.array([0.80, 0.80, 0.80, 0.80])
    scores = iter([(0.800, start), (0.805, start + [0.05, -0.04, 0.03, -0.02]),
                   (0.810, start + [0.010, 0.012, 0.011, 0.009]), (0.809, start + 0.009)])

    def validate():
        pooled, cases = next(scores)
        trainer.case_dice = cases.tolist()
        return 0.5, pooled

    monkeypatch.setattr(trainer, "validate", validate)
    history = trainer.fit()
    assert [h["best"] for h in history] == kept
    assert load_checkpoint(tmp_path / "checkpoint_best.pth")["iteration"] == 4
    assert history[1]["val_case_dice"] == pytest.approx([0.85, 0.76, 0.83, 0.78])
    if min_gain_se:
        # no fixed margin (min_gain 0): the log names only the standard-error test
        assert "(a mean of less than 1 standard errors of the cases' gains above iteration 0: not kept)" \
            in (tmp_path / "training.log").read_text()


def _constant_batch_trainer(tmp_path, config: TrainingConfig) -> Trainer:
    """A 1×1×1 conv trained and validated on one all-background batch (the scores are what a test makes them)."""
    net = torch.nn.Conv3d(1, 2, 1)
    batch = {"data": np.zeros((1, 1, 2, 2, 2), np.float32), "target": np.zeros((1, 1, 2, 2, 2), np.int64)}

    def loss(logits, target):
        return torch.nn.functional.cross_entropy(logits, target[:, 0])

    return Trainer(net, loss, iter(lambda: batch, None), [batch], config, tmp_path, device="cpu", quiet=True)


def test_validation_at_iteration_zero(tmp_path):
    trainer = _constant_batch_trainer(tmp_path, TrainingConfig(iterations=4, val_every=2, validate_at_start=True))
    history = trainer.fit()
    assert [h["iteration"] for h in history] == [0, 2, 4]
    assert (tmp_path / "checkpoint_best.pth").is_file()


@pytest.mark.parametrize("min_gain, kept, best_iteration", [(0.01, [True, False, True, False], 4),
                                                            (0.02, [True, False, False, False], 0)])
def test_a_trained_checkpoint_must_beat_iteration_zero_by_min_gain(tmp_path, monkeypatch, min_gain, kept,
                                                                   best_iteration):
    """The VFN stays its untrained self (mean fusion) unless training beats it on validation by min_gain."""
    from vfnet.checkpoint import load_checkpoint
    from vfnet.training.runner import trained_metadata

    trainer = _constant_batch_trainer(tmp_path, TrainingConfig(iterations=6, val_every=2, validate_at_start=True, min_gain=min_gain))
    scores = iter([0.800, 0.803, 0.812, 0.809])  # pseudo-Dice at iterations 0, 2, 4, 6
    monkeypatch.setattr(trainer, "validate", lambda: (0.5, next(scores)))
    history = trainer.fit()
    assert [h["best"] for h in history] == kept
    assert load_checkpoint(tmp_path / "checkpoint_best.pth")["iteration"] == best_iteration
    summary = trained_metadata(tmp_path)
    assert summary["best_iteration"] == best_iteration and summary["best_trained_iteration"] == 4
    assert summary["best_trained_val_pseudo_dice"] == pytest.approx(0.812)
    assert summary["best_val_pseudo_dice"] == pytest.approx(0.812 if best_iteration else 0.800)
    assert "above iteration 0: not kept" in (tmp_path / "training.log").read_text()


def test_no_mirroring_in_planned_training_and_tta_axes(demo_preprocessed):
    from batchgenerators.transforms.spatial_transforms import MirrorTransform

    from vfnet.experiment_planning.plans import Plan

    assert not any(isinstance(t, MirrorTransform) for t in augmentation_2d([16, 16]).transforms)
    assert any(isinstance(t, MirrorTransform) for t in augmentation_2d([16, 16], (1,)).transforms)
    plan = Plan.load(demo_preprocessed)
    assert all(plan.view(v).mirror_axes == [] for v in VIEWS)
    assert tta_axes(plan) == ()
    mirrored = {**plan.data, "views": {**plan["views"], "coronal": {**plan["views"]["coronal"], "mirror_axes": [1]}}}
    assert tta_axes(Plan(mirrored)) == (2,)  # the coronal slice's width is x
    # a version-1 plan from before mirroring was planned trained mirrored, but would train unmirrored now
    legacy = {**plan.data, "schema_version": 1,
              "views": {v: {k: s for k, s in spec.items() if k != "mirror_axes"} for v, spec in plan["views"].items()}}
    with pytest.raises(PlanError, match="before 2D mirroring was planned.*rerun vfnet_plan_and_preprocess"):
        Plan(legacy)


TINY_2D = {"iterations": 4, "batch_size": 4, "num_workers": 0, "val_every": 4, "val_batches": 1}
TINY_VFN = {"iterations": 4, "batch_size": 2, "val_every": 2}


def test_cca_crossval_scores_stack_and_prediction_uses_the_scored_pairs(demo_preprocessed, tmp_path):
    """A tiny 4-fold CCA plan end to end: crossval has the stack row and vfn's paired tests; predict fuses
    fold k's maps with fold k's VFN and averages, and vfn-all is a separate method."""
    import json

    from click.testing import CliRunner

    from vfnet import paths
    from vfnet.evaluation.crossval import crossval
    from vfnet.experiment_planning.plans import Plan
    from vfnet.pipeline.units import train_2d_unit, train_vfn_unit
    from vfnet.preprocessing.data import PreprocessedDataset
    from vfnet_cli.predict import predict_entry

    plan = Plan.load(demo_preprocessed)
    for unit in plan.units("2d"):
        for view in VIEWS:
            train_2d_unit(None, view, unit["name"], "quick", device="cpu", quiet=True, schedule_overrides=TINY_2D,
                          features=[4, 8])
    for unit in plan.units("vfn"):
        train_vfn_unit(None, unit["name"], "quick", device="cpu", quiet=True, schedule_overrides=TINY_VFN)
    vfn_dir = paths.unit_dir(paths.results_root() / demo_preprocessed.name, "quick", "vfn", "0")
    summary = json.loads((vfn_dir / "summary.json").read_text())
    assert summary["best_iteration"] in (0, 2, 4) and summary["start_val_pseudo_dice"] is not None
    # the leakage check on the records this training wrote: clean, then a VFN whose record claims its test fold
    from vfnet.atomic import read_json, write_json
    from vfnet.fusion.leakage import find_leaks

    leaks, checks = find_leaks(None, "quick")
    assert leaks == [] and checks > 50
    record_path = vfn_dir / "unit.json"
    honest = read_json(record_path)
    test_case = PreprocessedDataset(demo_preprocessed).fold_cases(["0"])[0]
    write_json(record_path, {**honest, "train_cases": honest["train_cases"] + [test_case]})
    leaks, _ = find_leaks(None, "quick")
    assert leaks and all(test_case in leak and "vfn unit '0'" in leak for leak in leaks), leaks
    write_json(record_path, honest)

    table = crossval(None, "quick", device="cpu", quiet=True)
    assert {"stack", "vfn", "mean", "majority"} <= set(table["methods"])
    # every case is scored once, by the models of the fold that left it out
    assert sorted(table["cases"]) == PreprocessedDataset(demo_preprocessed).all_cases
    assert {"vfn vs mean", "vfn vs majority", "vfn vs stack"} <= set(table["tests"])
    for fold in plan["fold_names"]:
        assert (paths.results_root() / demo_preprocessed.name / "quick" / "stack" / fold / "stack.json").is_file()
    raw = paths.raw_root() / demo_preprocessed.name
    out = tmp_path / "out"
    for fusion in ("vfn", "stack", "vfn-all"):
        result = CliRunner().invoke(predict_entry, ["-i", str(raw / "imagesTs"), "-o", str(out / fusion),
                                                    "--preset", "quick", "--fusion", fusion, "--device", "cpu", "-q"])
        assert result.exit_code == 0, result.output
        header = json.loads((out / fusion / "vfnet_predict.jsonl").read_text().splitlines()[0])
        assert header["fusion_units"] == (["all"] if fusion == "vfn-all" else ["0", "1", "2", "3"])
        assert len(list((out / fusion).glob("*.nii.gz"))) == 2
