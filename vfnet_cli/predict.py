"""vfnet_predict."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from vfnet.inference.models import PREDICT_METHODS
from vfnet.inference.predict import MODELS, predict
from vfnet.pipeline.distributed_predict import predict_at_scale
from vfnet_cli.common import command, dataset_option, preset_option, quiet_option


@command
@click.option("-i", "--input", "source", required=True, type=click.Path(exists=True, path_type=Path),
              help="A folder of images (NIfTI, NRRD, MHA; <case>_0000... for several channels; the _0000 "
                   "suffix is optional), a folder of DICOM series folders, or one file.")
@click.option("-o", "--output", "target", required=True, type=click.Path(path_type=Path),
              help="Output folder (never inside the input). One <case>.nii.gz per case.")
@dataset_option
@preset_option
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
              help="Keep the largest connected component of each label (default: as vfnet_crossval found best).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: also predict volumes mirrored along the axes the networks were "
                   "trained mirrored along, and average. Planned networks train without mirroring (it swaps "
                   "left/right labels), so --tta changes nothing for them.")
@click.option("--save-probabilities", is_flag=True,
              help="Also save each view's probabilities (<case>.npz, preprocessed grid).")
@click.option("--overwrite", is_flag=True, help="Predict cases whose output exists (default: skip them).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
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
                  overwrite, device, quiet, **scale):
    """Segment new images with a trained dataset's models.

    Each case is reoriented and preprocessed as planned, segmented along the axial, coronal
    and sagittal views (fold ensemble), fused (default: the method vfnet_crossval recorded,
    else the VFN), and written with exactly the input's size, spacing, origin and direction. A
    DICOM series folder gives <folder>.nii.gz. A case that cannot be read is named and
    skipped while the others finish; the exit code is then 1.

    With --model 3d the planned 3D U-Net baseline (fold ensemble of vfnet_train 3d) segments
    each case instead of the views and the fusion.

    \b
    At scale: --workers N spreads the cases over N processes (or --scheduler, an existing Dask
    cluster); --part-id I --num-parts N predicts only part I of N, for jobs sharded by hand.
    """
    run = predict
    if scale["workers"] > 1 or scale["scheduler"] or scale["num_parts"] > 1:
        run = functools.partial(predict_at_scale, **scale)
    report = run(source, target, dataset, preset, list(folds) or None, fusion, postprocess, tta,
                     save_probabilities, overwrite, device, quiet, model)
    if report.written:
        mean = sum(report.seconds.values()) / len(report.seconds)
        click.echo(f"Wrote {len(report.written)} case(s) to {target} ({mean:.2f} s per case)")
    if report.skipped:
        click.echo(f"Skipped {len(report.skipped)} case(s) whose output exists (use --overwrite)")
    for case, reason in report.failed.items():
        click.echo(f"FAILED {case}: {reason}", err=True)
    if report.failed:
        sys.exit(1)
