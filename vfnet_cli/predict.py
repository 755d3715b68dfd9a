"""vfnet_predict."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vfnet.fusion.methods import METHODS
from vfnet.inference.predict import MODELS, predict
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
                   "units trained on every case). Several at once: -f 0 1 2 3. With one fold k, the VFN of "
                   "test fold k fuses when it is trained, else the VFN 'all'.")
@click.option("--fusion", type=click.Choice(list(METHODS)), default=None,
              help="Fusion method of --model vfnet (default: the one vfnet_crossval found best, else vfn).")
@click.option("--postprocess/--no-postprocess", default=None,
              help="Keep the largest connected component of each label (default: as vfnet_crossval found best).")
@click.option("--tta", is_flag=True, help="Test-time augmentation: also predict mirrored volumes and average.")
@click.option("--save-probabilities", is_flag=True,
              help="Also save each view's probabilities (<case>.npz, preprocessed grid).")
@click.option("--overwrite", is_flag=True, help="Predict cases whose output exists (default: skip them).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@quiet_option
def predict_entry(source, target, dataset, preset, model, folds, fusion, postprocess, tta, save_probabilities,
                  overwrite, device, quiet):
    """Segment new images with a trained dataset's models.

    Each case is reoriented and preprocessed as planned, segmented along the axial, coronal
    and sagittal views (fold ensemble), fused (default: the method vfnet_crossval recorded,
    else the VFN), and written with exactly the input's size, spacing, origin and direction. A
    DICOM series folder gives <folder>.nii.gz. A case that cannot be read is named and
    skipped while the others finish; the exit code is then 1.

    With --model 3d the planned 3D U-Net baseline (fold ensemble of vfnet_train 3d) segments
    each case instead of the views and the fusion.
    """
    report = predict(source, target, dataset, preset, list(folds) or None, fusion, postprocess, tta,
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
