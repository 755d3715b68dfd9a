"""The one unit runner: stop, resume, unit.json, summary.json and callbacks behave alike for every network."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vfnet.atomic import read_json
from vfnet.errors import VfnetError
from vfnet.experiment_planning.settings import SEED
from vfnet.paths import UnitPaths
from vfnet.training.config import TrainingConfig
from vfnet.training.runner import Run, RunOptions, UnitCases, run_unit
from vfnet.training.train2d import View2dRecipe
from vfnet.training.train3d import UNet3dRecipe
from vfnet.training.train_vfn import VfnRecipe
from vfnet.training.trainer import Trainer


class _TinyRecipe:
    """A one-layer network on random batches: the runner's behaviour without a real network's cost."""

    stage, network, view = "2d", "tiny", None

    def __init__(self):
        self.built = 0

    def cases(self, setup):
        return UnitCases(["a", "b"], ["c"], ["d"], data="cases", record={"kind": "tiny"})

    def build(self, setup, cases, metadata, options):
        self.built += 1
        torch.manual_seed(SEED)
        network = torch.nn.Conv2d(1, 2, 1)
        rng = np.random.default_rng(0)

        def batches():
            while True:
                yield {"data": rng.normal(size=(2, 1, 4, 4)).astype(np.float32),
                       "target": rng.integers(0, 2, size=(2, 1, 4, 4)).astype(np.int64)}

        def loss(output, target):
            return torch.nn.functional.cross_entropy(output, target[:, 0])

        config = TrainingConfig(iterations=setup.schedule.iterations, lr=0.01, val_every=2)
        trainer = Trainer(network, loss, batches(), list(itertools.islice(batches(), 1)), config, setup.out,
                          device=setup.device, quiet=True, metadata={**metadata, "parameters": 6})
        return Run(trainer)


def test_stop_resume_and_finish_are_the_runners(demo_preprocessed):
    recipe, calls = _TinyRecipe(), []
    overrides = {"iterations": 6, "val_every": 2}
    options = RunOptions(quiet=True, schedule_overrides=overrides, stop_at=4)
    out = run_unit(recipe, None, "0", "default", "cpu", options, [calls.append])
    unit = UnitPaths(out)
    record = read_json(unit.record)
    assert record["train_cases"] == ["a", "b"] and record["predict_cases"] == ["d"] and record["kind"] == "tiny"
    assert record["schedule"]["iterations"] == 6
    assert unit.latest_checkpoint.is_file() and not unit.final_checkpoint.is_file()
    assert calls == [] and not unit.finished  # stopped on purpose: nothing handed on

    out = run_unit(recipe, None, "0", "default", "cpu", RunOptions(quiet=True, resume=True), [calls.append])
    assert unit.final_checkpoint.is_file() and len(calls) == 1
    trained = calls[0]
    assert trained.predict_cases == ["d"] and trained.data == "cases"
    assert trained.metadata["iterations"] == 6 and trained.metadata["network"] == "tiny"
    assert trained.metadata["best_iteration"] in (0, 2, 4, 6) and trained.metadata["parameters"] == 6
    assert recipe.built == 2

    # a callback writes the summary; a finished unit is then left alone by --continue and refused without it
    unit.summary.write_text("{}")
    run_unit(recipe, None, "0", "default", "cpu", RunOptions(quiet=True, resume=True), [calls.append])
    assert recipe.built == 2 and len(calls) == 1
    with pytest.raises(VfnetError, match="already trained"):
        run_unit(recipe, None, "0", "default", "cpu", RunOptions(quiet=True, schedule_overrides=overrides))


def test_a_trained_unit_without_summary_is_handed_on_without_training_again(demo_preprocessed):
    recipe, calls = _TinyRecipe(), []
    options = RunOptions(quiet=True, schedule_overrides={"iterations": 2, "val_every": 2})
    out = run_unit(recipe, None, "0", "default", "cpu", options)
    assert UnitPaths(out).final_checkpoint.is_file() and not UnitPaths(out).finished
    run_unit(recipe, None, "0", "default", "cpu", RunOptions(quiet=True, resume=True), [calls.append])
    assert recipe.built == 1 and len(calls) == 1  # e.g. held-out prediction killed midway: only it reruns


def test_every_network_brings_the_same_recipe():
    for recipe in (View2dRecipe("axial"), UNet3dRecipe(), VfnRecipe(use_image=False, seed=7, plan_seed=SEED)):
        assert recipe.stage in ("2d", "vfn", "3d")
        assert callable(recipe.cases) and callable(recipe.build)
    assert VfnRecipe(use_image=False, seed=7, plan_seed=SEED).network == "vfn_noimage_seed7"
    assert VfnRecipe(use_image=True, seed=SEED, plan_seed=SEED).network == "vfn"
    assert View2dRecipe("coronal").network == "2d_coronal" and UNet3dRecipe().network == "3d"
