"""Train the Volumetric Fusion Net on a fusion set (``vfnet_train vfn UNIT`` once its fusion set exists).

The VFN of test fold k trains on the fusion set of fold k (built by vfnet_build_fusion_set, or
by :func:`vfnet.pipeline.units.train_vfn_unit` when missing),
with patches cropped inside each case's region of interest (planned: crops only, so each
channel keeps its view and the anatomy its sides; ``"augmentation": "paper"`` adds the
paper's rotations, ``mirror_axes`` its flips), and the loss, optimizer and learning-rate
schedule of the plan's VFN schedule (planned: Dice, + cross-entropy for several classes; the
paper's SGD, AdamW in quick; the learning rate divided by 10 at 2/3 and 5/6 of the iterations).
Every validation case is scored whole at every validation, iteration 0 included (the untrained
VFN is mean fusion), and prediction uses the checkpoint that validated best. It shares the
trainer (checkpoints, resume, log, progress.png, mixed precision on CUDA) with the 2D views.
"""

from __future__ import annotations

import time
from pathlib import Path

from vfnet import paths
from vfnet.atomic import write_json
from vfnet.experiment_planning.plans import Plan
from vfnet.networks.vfn import build_vfn, count_parameters
from vfnet.resolution import normalise_factor
from vfnet.training.config import TrainingConfig
from vfnet.training.data_vfn import VfnPatchSampler, load_fusion_samples, load_manifest, tile_batches
from vfnet.training.ddp import DistributedContext
from vfnet.training.losses import make_loss
from vfnet.training.trainer import Trainer, saved_iteration, seed_everything
from vfnet.training.units import clear_previous_run, prepare_unit, split_validation, unit_finished


def vfn_network_name(use_image: bool) -> str:
    return "vfn" if use_image else "vfn_noimage"


def fit_vfn_unit(dataset: str | int | None, unit: str, preset: str = "default", use_image: bool = True,
                 device: str = "auto", num_threads: int | None = None, resume: bool = False,
                 quiet: bool = False, schedule_overrides: dict | None = None, stop_at: int | None = None,
                 overwrite: bool = False, seed: int | None = None,
                 distributed: DistributedContext | None = None) -> Path:
    """Train VFN unit ``unit`` (a fold, ``all`` or ``holdout``) on its fusion set.

    ``seed`` seeds the weights and the patch sampling (the validation cases stay the same); None
    takes the plan's (``training.seed``), and another seed trains into ``vfn_seed<seed>`` beside
    the unit, to measure how much the VFN's result depends on it.

    The fusion set must exist (:func:`vfnet.pipeline.units.train_vfn_unit` builds it when
    missing; a missing one raises ``ModelNotFoundError`` naming the command). ``stop_at`` stops after that
    many iterations with a latest checkpoint and no summary (to check that a long schedule
    starts; continue later with ``resume``). ``distributed`` trains with DDP (``vfnet_train --ddp`` under
    torchrun); only rank 0 writes.

    Returns:
        The unit's results folder (``<results>/<preset>/vfn/<unit>`` or ``vfn_noimage``).
    """
    training = Plan.load(paths.preprocessed_dataset(dataset)).training
    seed = training.seed if seed is None else seed
    network_name = vfn_network_name(use_image) + ("" if seed == training.seed else f"_seed{seed}")
    setup = prepare_unit(dataset, "vfn", network_name, unit, preset, device, schedule_overrides, resume, overwrite)
    preprocessed, plan, spec, schedule, torch_device, out = (
        setup.preprocessed, setup.plan, setup.spec, setup.schedule, setup.device, setup.out)
    if resume and unit_finished(out):
        return out
    folder = paths.fusion_set_dir(preprocessed, preset, str(unit))
    manifest = load_manifest(folder)
    cases = sorted(manifest["cases"])
    train_cases, val_cases = split_validation(cases, f"vfn-{unit}", plan.training)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "unit.json", {
        "network": network_name, "unit": str(unit), "preset": preset, "use_image": use_image,
        "train_folds": spec["train_folds"], "predict_folds": spec["predict_folds"],
        "train_cases": train_cases, "val_cases": val_cases, "fusion_set": str(folder),
        "schedule": schedule.to_dict()})
    if not resume:
        clear_previous_run(out)

    seed_everything(seed)
    model = build_vfn(plan, plan.num_channels, plan.num_classes, use_image=use_image)
    parameters = count_parameters(model)
    vfn = plan.vfn
    common = {"patch_size": vfn.patch_size, "spacing": plan["target_spacing"],
              "num_image_channels": plan.num_channels, "num_foreground": plan.num_classes - 1,
              "batch_size": schedule.batch_size, "use_image": use_image}
    start_iteration = saved_iteration(out) if resume else 0
    # the plan may have the VFN fuse at a coarser in-plane resolution (see plan_vfn); a schedule may override it
    factor = normalise_factor(schedule.input_downsample or vfn.input_downsample)
    train_batches = VfnPatchSampler(load_fusion_samples(folder, train_cases, factor, plan.num_classes),
                                    augment=vfn.augmentation == "paper", mirror_axes=vfn.mirror_axes,
                                    seed=seed + start_iteration, **common)
    # every validation case, whole, at every validation (iteration 0 included)
    validation = VfnPatchSampler(load_fusion_samples(folder, val_cases, factor, plan.num_classes), augment=False,
                                 mirror_axes=(), seed=plan.training.seed, **common)
    val_batches = tile_batches(validation, schedule.val_batch_size or schedule.batch_size)
    config = TrainingConfig.from_schedule(schedule, seed=seed)
    trainer = Trainer(model, make_loss(schedule.loss), train_batches, val_batches, config, out, device=torch_device,
                      num_threads=num_threads, quiet=quiet, distributed=distributed,
                      metadata={"network": network_name, "unit": str(unit), "preset": preset,
                                "use_image": use_image, "parameters": parameters,
                                "input_downsample": list(factor),
                                "train_cases": train_cases, "val_cases": val_cases})
    trainer.log(f"VFN {'with' if use_image else 'without'} image: {parameters:,} parameters, "
                f"{model.in_channels} input channels, patch {vfn.patch_size}, in-plane downsample {list(factor)}, "
                f"augmentation {vfn.augmentation}, mirroring {vfn.mirror_axes}, loss {schedule.loss}, "
                f"{len(val_batches)} validation batches, "
                f"{len(train_cases)} training / {len(val_cases)} validation cases")
    if resume:
        trainer.resume()
    start = time.perf_counter()
    trainer.fit(stop_at=stop_at)
    if trainer.iteration < schedule.iterations or not trainer.is_main:
        return out  # stopped early on purpose (not finished, so no summary), or a DDP rank that writes nothing
    write_json(out / "summary.json", {
        "network": network_name, "unit": str(unit), "preset": preset, "parameters": parameters,
        "iterations": schedule.iterations, "best_val_pseudo_dice": trainer.best_dice,
        "best_iteration": max(trainer.history, key=lambda h: h["val_dice"])["iteration"] if trainer.history else None,
        "start_val_pseudo_dice": trainer.history[0]["val_dice"] if trainer.history else None,
        "seconds_this_run": round(time.perf_counter() - start, 1), "data_wait_share": trainer.data_wait_share()})
    return setup.finish()
