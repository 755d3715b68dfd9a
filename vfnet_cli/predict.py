"""vfnet_predict."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from vfnet.pipeline.distributed_predict import predict_at_scale
from vfnet.prediction.models import PREDICT_METHODS
from vfnet.prediction.predict import MODELS, predict
from vfnet_cli.common import command, dataset_option, quiet_option, trained_preset_option, use_trained_preset


@command
@click.option("-i", "--input", "source", required=True, type=click.Path(exists=True, path_type=Path),
              help="A folder of images (NIfTI, NRRD, MHA; <case>_0000... for several channels; the _0000 "
                   "suffix is optional), a folder of DICOM series folders, or one file.")
@click.option("-o", "--output", "target", required=True, type=click.Path(path_type=Path),
              help="Output folder (never inside the input): one <case>.nii.gz per case. For a single input "
                   "file, a file name ending in .nii.gz (or .nii, .nrrd, .mha) writes that file instead.")
@dataset_option
@trained_preset_option
@click.option("--model", type=click.Choice(list(MODELS)), default="vfnet", show_default=True,
              help="vfnet: the three views fused; 3d: the 3D U-Net baseline (vfnet_train 3d) instead.")
@click.option("-f", "--folds", multiple=True,
              help="Fold units whose predictions are averaged (default: all K folds, or holdout; 'all' uses the "
                   "units trained on every case). Several at once: -f 0 1 2 3. The VFN (and stack) of "
                   "test fold k fuses fold unit k's maps, the pair cross-validation scored, and the "
                   "folds' fused probabilities are averaged.")
@click.option("--fusion", type=click.Choice(list(PREDICT_METHODS)), default=None,
              help="Fusion method of --model vfnet (default: the one vfnet_crossval found best, else vfn). "
                   "vfn-all: the VFN trained on every case, fusing the mean of the fold ensemble "
                   "(a pairing cross-validation cannot score).")
@click.option("--postprocess/--no-postprocess", default=None,
              help="Keep the largest connected component of every label, or of none (default: per label, as "
                   "vfnet_crossval chose on the held-out cases; see vfnet_apply_postprocessing).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: also predict volumes mirrored along the axes the networks were "
                   "trained mirrored along, and average. Planned networks train without mirroring (it swaps "
                   "left/right labels), so --tta changes nothing for them.")
@click.option("--save-probabilities", is_flag=True,
              help="Also save the fused class probabilities as nnU-Net does: <case>.npz ('probabilities', float16 "
                   "(classes, z, y, x) in the input's voxel grid) and <case>.json (spacing, origin, direction, "
                   "shape, labels). vfnet_ensemble averages them.")
@click.option("-chk", "--checkpoint", type=click.Choice(["final", "best"]), default=None,
              help="Checkpoint of every network: final, or best (the one that validated best). Default: the "
                   "views' final checkpoints and each VFN's best, the models vfnet_crossval scored.")
@click.option("--step-size", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Step between the sliding windows of the VFN and the 3D U-Net, as a fraction of the patch "
                   "(nnU-Net's default 0.5; smaller is slower and smoother). Default: the planned strides "
                   "(plans.json's vfn.stride and unet3d.stride: half a patch).")
@click.option("-npp", "--num-processes-preprocessing", type=click.IntRange(1), default=2, show_default=True,
              help="Threads reading and preprocessing the next cases while the networks run (that many "
                   "cases are held in memory ahead).")
@click.option("-nps", "--num-processes-segmentation-export", type=click.IntRange(1), default=2, show_default=True,
              help="Threads resampling finished cases to their input grid and writing them.")
@click.option("--overwrite", is_flag=True, help="Predict cases whose output exists (default: skip them).")
@click.option("--series", default=None, metavar="UID",
              help="DICOM folders holding several series: use this SeriesInstanceUID (default: the series with "
                   "the most slices, ties by smallest UID; the choice is printed).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the networks run: auto (CUDA when available), cpu or cuda.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Spread the cases over this many local Dask worker processes (models loaded once per worker).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Spread the cases over the workers of an existing Dask cluster (tcp://host:8786).")
@click.option("--part-id", type=int, default=0, show_default=True,
              help="This command's part of the sorted cases (case i goes to part i %% num-parts), as nnU-Net.")
@click.option("--num-parts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of parts the cases are split into by hand (one command or cluster job per part).")
@quiet_option
def predict_entry(source, target, dataset, preset, model, folds, fusion, postprocess, tta, save_probabilities,
                  checkpoint, step_size, num_processes_preprocessing, num_processes_segmentation_export,
                  overwrite, series, device, quiet, **scale):
    """Segment new images with a trained dataset's models.

    Each case is reoriented and preprocessed as planned, segmented along the axial, coronal
    and sagittal views (fold ensemble), fused (default: the method vfnet_crossval recorded,
    else the VFN), and written with exactly the input's size, spacing, origin and direction. A
    DICOM series folder gives <folder>.nii.gz; its slices must be evenly spaced (a missing slice
    is an error, never a silent uniform spacing). A case that cannot be read is named and
    skipped while the others finish; the exit code is then 1.

    With --model 3d the planned 3D U-Net baseline (fold ensemble of vfnet_train 3d) segments
    each case instead of the views and the fusion.

    \b
    At scale: --workers N spreads the cases over N processes (or --scheduler, an existing Dask
    cluster); --part-id I --num-parts N predicts only part I of N, for jobs sharded by hand.
    """
    preset = use_trained_preset(dataset, preset, "3d" if model == "3d" else "2d")
    run = predict
    if scale["workers"] > 1 or scale["scheduler"] or scale["num_parts"] > 1:
        run = functools.partial(predict_at_scale, **scale)
    report = run(source, target, dataset, preset, list(folds) or None, fusion, postprocess, tta,
                 save_probabilities, overwrite, device, quiet, model, checkpoint=checkpoint, step_size=step_size,
                 num_processes_preprocessing=num_processes_preprocessing,
                 num_processes_export=num_processes_segmentation_export, series=series)
    for case, note in report.notes.items():
        click.echo(f"{case}: {note}")
    if report.written:
        mean = sum(report.seconds.values()) / len(report.seconds)
        click.echo(f"Wrote {len(report.written)} case(s) to {target} ({mean:.2f} s per case)")
    if report.skipped:
        click.echo(f"Skipped {len(report.skipped)} case(s) whose output already exists in {target}; to predict "
                   "them again, add --overwrite")
    for case, reason in report.failed.items():
        click.echo(f"FAILED {case}: {reason}", err=True)
    if report.failed:
        sys.exit(1)
