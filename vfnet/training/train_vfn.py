"""Train the Volumetric Fusion Net on a fusion set (``vfnet_train vfn UNIT`` once its fusion set exists).

The VFN of test fold k trains on the fusion set of fold k (built by vfnet_build_fusion_set, or
by :func:`vfnet.pipeline.units.train_vfn_unit` when missing),
with patches cropped inside each case's region of interest (planned: crops only, so each
channel keeps its view and the anatomy its sides; ``"augmentation": "paper"`` adds the
paper's rotations, ``mirror_axes`` its flips), and the loss, optimizer and learning-rate
schedule of the plan's VFN schedule (planned: Dice, + cross-entropy for several classes; the
paper's SGD, AdamW in quick; the learning rate divided by 10 at 2/3 and 5/6 of the iterations).
Every validation case (at least the plan's ``vfn.validation_cases``) is scored whole at every
validation, iteration 0 included (the untrained VFN is mean fusion), and prediction uses the
checkpoint that validated best, where a trained one must beat iteration 0 by ``vfn.min_gain`` Dice
points (else the VFN stays mean fusion). It shares the
trainer (checkpoints, resume, log, progress.png, mixed precision on CUDA) with the 2D views.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vfnet import paths
from vfnet.atomic import write_json
from vfnet.errors import VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.networks.stack import fit_stack_samples
from vfnet.networks.vfn import build_vfn, count_parameters, plan_prior
from vfnet.paths import UnitPaths
from vfnet.resolution import normalise_factor
from vfnet.training.config import TrainingConfig
from vfnet.training.data_vfn import VfnPatchSampler, load_fusion_samples, load_manifest, samples_on_device, tile_batches
from vfnet.training.ddp import DistributedContext
from vfnet.training.losses import make_loss
from vfnet.training.runner import Run, RunOptions, UnitCases, run_unit
from vfnet.training.trainer import Trainer, saved_iteration, seed_everything
from vfnet.training.units import TrainedUnit, UnitSetup, seeded_draw, split_validation


def vfn_network_name(use_image: bool) -> str:
    return paths.VFN_NETWORK if use_image else paths.VFN_NOIMAGE_NETWORK


def fit_vfn_unit(dataset: str | int | None, unit: str, preset: str = "default", use_image: bool = True,
                 device: str = "auto", num_threads: int | None = None, resume: bool = False,
                 quiet: bool = False, schedule_overrides: dict | None = None, stop_at: int | None = None,
                 overwrite: bool = False, seed: int | None = None,
                 distributed: DistributedContext | None = None, prior: str | None = None, suffix: str = "",
                 view_dropout: float = 0.0, validation_cases: int | None = None,
                 min_gain: float | None = None, map_jitter: float | None = None,
                 min_gain_se: float | None = None, view_symmetric: bool | None = None,
                 training_cases: int | None = None) -> Path:
    """Train VFN unit ``unit`` (a fold, ``all`` or ``holdout``) on its fusion set, then write its summary.

    ``seed`` seeds the weights and the patch sampling (the validation cases stay the same); None
    takes the plan's (``training.seed``), and another seed trains into ``vfn_seed<seed>`` beside
    the unit, to measure how much the VFN's result depends on it. ``prior`` (``mean`` or
    ``stack``) replaces the plan's view prior and ``suffix`` is added to the network's folder name
    (``vfn<suffix>``), ``view_dropout`` the share of training patches with one view replaced by the
    other two's mean (:class:`vfnet.training.data_vfn.VfnPatchSampler`), and ``validation_cases``,
    ``min_gain``, ``map_jitter``, ``min_gain_se`` and ``view_symmetric`` replace the plan's ``vfn`` keys of the same names
    (None: the plan's), and ``training_cases`` keeps only that many of the training cases (a seeded draw;
    the validation cases stay the same; None: all): variants for benchmarks, trained beside the planned VFN.

    The fusion set must exist (:func:`vfnet.pipeline.units.train_vfn_unit` builds it when
    missing; a missing one raises ``ModelNotFoundError`` naming the command). The other arguments:
    :class:`vfnet.training.runner.RunOptions`.

    Returns:
        The unit's results folder (``<results>/<preset>/vfn/<unit>`` or ``vfn_noimage``).
    """
    plan_seed = Plan.load(paths.preprocessed_dataset(dataset)).training.seed
    options = RunOptions(num_threads, resume, quiet, overwrite, schedule_overrides, stop_at, distributed)
    recipe = VfnRecipe(use_image, plan_seed if seed is None else seed, plan_seed, prior, suffix, view_dropout,
                       validation_cases, min_gain, map_jitter, min_gain_se, view_symmetric, training_cases)
    return run_unit(recipe, dataset, unit, preset, device, options, [write_vfn_summary])


def write_vfn_summary(trained: TrainedUnit) -> None:
    """A VFN predicts nothing held out: its summary is what its final checkpoint records."""
    write_json(UnitPaths(trained.setup.out).summary, trained.metadata)


# the plan's ``vfn`` keys a VFN unit records in its unit.json and checkpoints (with any override a benchmark gave it)
RECORDED_PLAN_KEYS = ("map_jitter", "min_gain", "min_gain_se", "view_symmetric")


class VfnRecipe:
    """The VFN for :func:`vfnet.training.runner.run_unit`: ROI patches of its fusion set's cases.

    A ``seed`` other than the plan's trains into ``<network>_seed<seed>``; ``prior`` None takes the
    plan's view prior, and ``suffix`` is added to the folder name. The VFN validates on at least the
    plan's ``vfn.validation_cases`` fusion-set cases and keeps a trained checkpoint only when it beats
    the view prior there by ``vfn.min_gain`` Dice points (``validation_cases``, ``min_gain``: others).
    """

    stage = "vfn"
    view = None

    def __init__(self, use_image: bool, seed: int, plan_seed: int, prior: str | None = None, suffix: str = "",
                 view_dropout: float = 0.0, validation_cases: int | None = None, min_gain: float | None = None,
                 map_jitter: float | None = None, min_gain_se: float | None = None,
                 view_symmetric: bool | None = None, training_cases: int | None = None):
        self.use_image, self.seed, self.prior, self.view_dropout = use_image, seed, prior, view_dropout
        if training_cases is not None and training_cases < 1:
            raise VfnetError(f"training_cases must be at least 1, not {training_cases}")
        self.training_cases = training_cases
        # the plan's ``vfn`` keys this VFN replaces (None: the plan's value)
        self.overrides = {"validation_cases": validation_cases, "min_gain": min_gain, "map_jitter": map_jitter,
                          "min_gain_se": min_gain_se, "view_symmetric": view_symmetric}
        self.network = vfn_network_name(use_image) + ("" if seed == plan_seed else f"_seed{seed}") + suffix

    def cases(self, setup: UnitSetup) -> UnitCases:
        folder = paths.fusion_set_dir(setup.preprocessed, setup.preset, str(setup.spec["name"]))
        cases = sorted(load_manifest(folder)["cases"])
        train, val = split_validation(cases, f"vfn-{setup.spec['name']}", setup.plan.training,
                                      self.planned(setup, "validation_cases"))
        if self.training_cases is not None and self.training_cases < len(train):
            train = seeded_draw(train, self.training_cases, setup.plan.training, f"vfn-{setup.spec['name']}-training")
        return UnitCases(train, val, [], folder, record={"use_image": self.use_image, "fusion_set": str(folder),
                                                  "view_dropout": self.view_dropout,
                                                  "training_cases": self.training_cases,
                                                  **{key: self.planned(setup, key)
                                                     for key in RECORDED_PLAN_KEYS}})

    def planned(self, setup: UnitSetup, key: str):
        """This VFN's value of the plan's ``vfn.<key>``: its own override, else the plan's."""
        own = self.overrides[key]
        return getattr(setup.plan.vfn, key) if own is None else own

    def build(self, setup: UnitSetup, cases: UnitCases, metadata: dict, options: RunOptions) -> Run:
        plan, schedule, folder, use_image, seed = setup.plan, setup.schedule, cases.data, self.use_image, self.seed
        seed_everything(seed)
        prior = self.prior or plan_prior(plan)
        model = build_vfn(plan, plan.num_channels, plan.num_classes, use_image=use_image, view_prior=prior or False,
                          view_symmetric=self.planned(setup, "view_symmetric"))
        parameters = count_parameters(model)
        vfn = plan.vfn
        common = {"patch_size": vfn.patch_size, "spacing": plan["target_spacing"],
                  "num_image_channels": plan.num_channels, "num_foreground": plan.num_classes - 1,
                  "batch_size": schedule.batch_size, "use_image": use_image}
        start_iteration = saved_iteration(setup.out) if options.resume else 0
        # the plan may have the VFN fuse at a coarser in-plane resolution (see plan_vfn); a schedule may override it
        factor = normalise_factor(schedule.input_downsample or vfn.input_downsample)
        train_samples = load_fusion_samples(folder, cases.train, factor, plan.num_classes)
        if prior == "stack":  # fitted on the training cases only: validation scores it as it would a new case
            model.set_stack_prior(fit_stack_samples(train_samples, cases.train, plan.num_channels,
                                                    plan.num_classes, seed=plan.fusion.stack_seed,
                                                    max_voxels=plan.fusion.stack_max_voxels))
        # on a GPU with room, the training cases move there once and batches are cropped on the GPU
        device = options.distributed.device if options.distributed is not None else setup.device
        train_samples = samples_on_device(train_samples, device)
        on_device = bool(train_samples) and isinstance(train_samples[0][0], torch.Tensor)
        train_batches = VfnPatchSampler(train_samples, augment=vfn.augmentation == "paper",
                                        mirror_axes=vfn.mirror_axes, seed=seed + start_iteration,
                                        view_dropout=self.view_dropout, map_jitter=self.planned(setup, "map_jitter"), **common)
        # every validation case, whole, at every validation (iteration 0 included)
        validation = VfnPatchSampler(load_fusion_samples(folder, cases.val, factor, plan.num_classes), augment=False,
                                     mirror_axes=(), seed=plan.training.seed, **common)
        val_batches = tile_batches(validation, schedule.val_batch_size or schedule.batch_size)
        config = TrainingConfig.from_schedule(schedule, seed=seed, min_gain=self.planned(setup, "min_gain") / 100,
                                              min_gain_se=self.planned(setup, "min_gain_se"))
        trainer = Trainer(model, make_loss(schedule.loss), train_batches, val_batches, config, setup.out,
                          device=setup.device, num_threads=options.num_threads, quiet=options.quiet,
                          distributed=options.distributed,
                          metadata={**metadata, "use_image": use_image, "parameters": parameters, "view_prior": prior,
                                    "input_downsample": list(factor), "samples_on_device": on_device,
                                    "view_dropout": self.view_dropout,
                                    **{key: self.planned(setup, key) for key in RECORDED_PLAN_KEYS},
                                    "train_cases": cases.train, "val_cases": cases.val})
        min_gain_se = self.planned(setup, "min_gain_se")
        trainer.log(f"VFN {'with' if use_image else 'without'} image: {parameters:,} parameters, view prior {prior}, "
                    f"views {'sorted per voxel' if model.view_symmetric else 'by view'}, "
                    f"{model.in_channels} input channels, patch {vfn.patch_size}, in-plane downsample "
                    f"{list(factor)}, augmentation {vfn.augmentation}, mirroring {vfn.mirror_axes}, loss "
                    f"{schedule.loss}, {len(val_batches)} validation batches, training patches cropped on "
                    f"{device if on_device else 'cpu'}, "
                    f"{len(cases.train)} training / {len(cases.val)} validation cases, a trained checkpoint kept only "
                    f"{self.planned(setup, 'min_gain'):g} Dice points above iteration 0"
                    + (f", its cases' mean gain at least {min_gain_se:g} standard errors" if min_gain_se else ""))
        return Run(trainer)
