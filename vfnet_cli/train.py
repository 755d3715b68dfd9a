"""vfnet_train and vfnet_train_all."""

from __future__ import annotations

import sys

import click

from vfnet.pipeline.jobs import STAGE_ORDER, train_all
from vfnet.pipeline.units import train_2d_unit, train_3d_unit, train_vfn_unit
from vfnet.training.budget import ALLOCATIONS
from vfnet.views import VIEWS
from vfnet_cli.common import budget_option, command, dataset_option, preset_option, quiet_option, resolve_preset

device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="auto: CUDA (mixed precision) when available, else CPU.")
threads_option = click.option("--num-threads", type=int, default=None,
                              help="torch CPU threads (CPU only; default: torch's choice).")


def _train_2d(arguments: tuple[str, ...], **options):
    if len(arguments) != 2:
        raise click.UsageError("2d takes VIEW and UNIT, e.g. vfnet_train 2d axial 0 "
                               f"(views: {', '.join(VIEWS)}; units: see plans.json)")
    view, unit = arguments
    return train_2d_unit(options["dataset"], view, unit, preset=options["preset"], device=options["device"],
                         num_threads=options["num_threads"], resume=options["resume"], quiet=options["quiet"],
                         overwrite=options["overwrite"], distributed=options["distributed"])


def _train_vfn(arguments: tuple[str, ...], **options):
    if len(arguments) != 1:
        raise click.UsageError("vfn takes UNIT, e.g. vfnet_train vfn 0 (a test fold, all, or holdout)")
    return train_vfn_unit(options["dataset"], arguments[0], preset=options["preset"],
                          use_image=not options["no_image"], device=options["device"],
                          num_threads=options["num_threads"], resume=options["resume"], quiet=options["quiet"],
                          overwrite=options["overwrite"], distributed=options["distributed"])


def _train_3d(arguments: tuple[str, ...], **options):
    if len(arguments) != 1:
        raise click.UsageError("3d takes UNIT, e.g. vfnet_train 3d 0 (a fold, holdout, or all)")
    return train_3d_unit(options["dataset"], arguments[0], preset=options["preset"], device=options["device"],
                         num_threads=options["num_threads"], resume=options["resume"], quiet=options["quiet"],
                         overwrite=options["overwrite"], distributed=options["distributed"])


# One entry per network kind: its positional arguments (for messages) and the function that trains it.
NETWORKS = {"2d": ("VIEW UNIT", _train_2d), "vfn": ("UNIT", _train_vfn), "3d": ("UNIT", _train_3d)}


@command
@click.argument("network", type=click.Choice(list(NETWORKS)))
@click.argument("arguments", nargs=-1)
@dataset_option
@preset_option
@budget_option
@device_option
@threads_option
@click.option("--continue", "resume", is_flag=True,
              help="Continue from checkpoint_latest.pth: weights, optimizer, schedule, iteration and random state.")
@click.option("--overwrite", is_flag=True,
              help="Train a finished unit again; the trained unit stays until the new run is complete.")
@click.option("--no-image", is_flag=True,
              help="vfn only: the paper's ablation without the image channel (results in vfn_noimage/).")
@click.option("--ddp", is_flag=True,
              help="Train the unit on every process of a torchrun job (DistributedDataParallel: NCCL on GPUs, "
                   "gloo on CPU); each step splits the global batch between the processes; rank 0 writes.")
@quiet_option
def train_entry(network, arguments, dataset, preset, budget, device, num_threads, resume, overwrite, no_image, ddp,
                quiet):
    """Train one unit of a network and predict the folds it leaves out.

    \b
    vfnet_train 2d VIEW UNIT   2D U-Net along VIEW (axial, coronal, sagittal) on a plan unit:
                               a fold k (trains on the other folds, predicts k), a CCA unit
                               cca_k_j (predicts k and j), holdout, or all.
    Example: vfnet_train 2d axial 0 -d 4 --preset quick

    \b
    vfnet_train vfn UNIT       Volumetric Fusion Net of a test fold k (trained on the CCA maps
                               of every case outside fold k), all (deployment), or holdout.
                               Builds the fusion set first when it is missing.
    Example: vfnet_train vfn 0 -d 4 --preset quick [--no-image]

    \b
    vfnet_train 3d UNIT        the planned 3D U-Net baseline (nnU-Net-shaped) on a fold k
                               (trains on the other folds, predicts k), holdout, or all.
    Example: vfnet_train 3d 0 -d 4 --preset quick

    \b
    torchrun --standalone --nproc-per-node 2 $(which vfnet_train) 2d axial 0 -d 4 --ddp
                               one unit on 2 GPUs (or 2 CPU processes); the batch size must
                               be a multiple of the number of processes.

    Budgeted presets (quick = 60 minutes, --budget N) take the unit's schedule from the budget of
    the whole plan (<preset>/budget.json, calibrated on this device the first time), exactly as
    vfnet_train_all plans it; --continue keeps the schedule the unit started with.

    Writes $vfnet_results/TaskXX_Name/<preset>/<network>/<unit>/: checkpoint_{latest,best,final}.pth,
    training.log, progress.png, unit.json (the cases and the schedule it trained with),
    predictions/<case>.npz and summary.json (Dice of the held-out cases).
    """
    if no_image and network != "vfn":
        raise click.UsageError("--no-image applies to vfn only")
    preset = resolve_preset(preset, budget)
    distributed = None
    if ddp:
        from vfnet.training.ddp import init_distributed

        distributed = init_distributed(device)
    try:
        out = NETWORKS[network][1](arguments, dataset=dataset, preset=preset, device=device,
                                   num_threads=num_threads, resume=resume, overwrite=overwrite, no_image=no_image,
                                   quiet=quiet, distributed=distributed)
    finally:
        if distributed is not None:
            distributed.close()
    if distributed is None or distributed.is_main:
        click.echo(f"Done: {out}")


@command
@dataset_option
@preset_option
@budget_option
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=None,
              help="With a budget: equal time for every unit of a view (equal, the default) or time in "
                   "proportion to each unit's training cases (epochs).")
@click.option("--stage", type=click.Choice([*STAGE_ORDER, "all"]), default="all", show_default=True,
              help="Which networks to train; all runs the stages in order.")
@click.option("--views", multiple=True, help=f"Views to train (repeat or comma-separate; default: {', '.join(VIEWS)}).")
@click.option("--print-jobs", is_flag=True,
              help="Print the unfinished steps stage by stage, one command a line, and exit: the steps of a "
                   "stage are independent; a stage starts when the one before has finished.")
@click.option("--slurm-script", type=click.Path(dir_okay=False), default=None,
              help="Write a bash script that submits one SLURM job array per stage, chained with "
                   "--dependency=afterok, and exit.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train independent units side by side in this many local Dask worker processes, the "
                   "machine's cores divided between them (1: one after the other, without Dask).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the units on an existing Dask cluster, e.g. tcp://head-node:8786 (dask-jobqueue, "
                   "Kubernetes); GPU training asks each unit for a GPU=1 worker resource.")
@device_option
@threads_option
@quiet_option
def train_all_entry(dataset, preset, budget, allocation, stage, views, print_jobs, slurm_script, workers, scheduler,
                    device, num_threads, quiet):
    """Train every unfinished unit of the plan, in order, continuing those that were interrupted,
    then cross-validate every fusion method (vfnet_crossval).

    \b
    With a budget (--budget MINUTES, or --preset quick = 60 minutes) a calibration of a few
    seconds measures each network on this device; every 2D unit, fusion set, VFN and crossval
    are then planned to fit the budget: resolution and patch per view, iterations per unit. A
    budget too small for a minimum useful schedule is refused with the smallest that works.
    After each unit the units not yet started are re-planned with the measured speed. The
    plan is in <preset>/budget.json. The 3D baseline and the VFN's no-image ablation are not
    part of a budget (--stage 3d trains the baseline with its fixed schedule).

    \b
    With --workers N (or --scheduler ADDRESS) the units form a graph on Dask: 2D units → fusion
    sets → VFN units, 3D units on their own, crossval last. Independent units train side by side;
    a failed unit stops only the units that need it, every failure is named at the end (exit
    code 1), and a rerun skips finished units and resumes interrupted ones. With a budget, the
    units share N × the budget of compute, calibrated at one worker's thread count.

    Examples:
      vfnet_train_all -d 4 --budget 60
      vfnet_train_all -d 4 --budget 60 --workers 2
      vfnet_train_all -d 4 --preset default --scheduler tcp://head-node:8786 --device cuda
      vfnet_train_all -d 4 --preset default --print-jobs
      vfnet_train_all -d 4 --preset default --slurm-script train.sh && bash train.sh
    """
    preset = resolve_preset(preset, budget)
    view_list = [v.strip() for text in views for v in text.split(",") if v.strip()] or None
    if print_jobs or slurm_script:
        from pathlib import Path

        from vfnet.pipeline.graph import print_lines, training_graph
        from vfnet.pipeline.graph import slurm_script as make_slurm_script

        _, nodes = training_graph(dataset, preset, stage, view_list)
        if slurm_script:
            Path(slurm_script).write_text(make_slurm_script(nodes))
            click.echo(f"SLURM script written to {slurm_script}; submit with: bash {slurm_script}")
        if print_jobs:
            for line in print_lines(nodes):
                click.echo(line)
        return
    if workers > 1 or scheduler:
        from vfnet.pipeline.dask_runner import train_all_distributed

        result = train_all_distributed(dataset, preset, stage, view_list, workers, scheduler, log=click.echo,
                                       allocation=allocation, device=device, num_threads=num_threads, quiet=quiet)
        click.echo(f"Trained {len(result.done)} step(s), {len(result.skipped)} already finished.")
        if not result.ok:
            click.echo(f"{len(result.failed)} step(s) failed, {len(result.blocked)} not run:", err=True)
            for line in result.failure_lines():
                click.echo(f"  {line}", err=True)
            sys.exit(1)
        return
    done = train_all(dataset, preset, stage, view_list, log=click.echo, allocation=allocation, device=device,
                     num_threads=num_threads, quiet=quiet)
    click.echo(f"Trained {len(done)} unit(s).")
