"""vfnet_export_model and vfnet_install_model."""

from __future__ import annotations

from pathlib import Path

import click

from vfnet.deployment import export_model, install_model, read_manifest
from vfnet_cli.common import command, dataset_option, trained_preset_option, use_trained_preset


@command
@dataset_option
@click.option("-o", "--output", "output_zip", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The zip to write, e.g. model.zip.")
@trained_preset_option
@click.option("--no-folds", is_flag=True,
              help="Export each view's 2D unit 'all' instead of the K fold units (smaller; predict with -f all).")
def export_model_entry(dataset, output_zip, preset, no_folds):
    """Zip a trained dataset's deployment models so another machine can predict with them.

    The zip holds plans.json, dataset.json, fingerprint.json and splits.json, the units
    vfnet_predict uses (each view's fold units, or 'holdout', and the VFN 'all' or
    'holdout', plus the no-image VFN and the 2D units 'all' when trained): their
    checkpoint_final.pth, unit.json and summary.json, the recorded best fusion method, and
    vfnet_model.json, a manifest with a checksum of every file. Install it with
    vfnet_install_model.
    """
    preset = use_trained_preset(dataset, preset)
    path = export_model(dataset, output_zip, preset=preset, include_all_folds=not no_folds)
    manifest = read_manifest(path)
    size = path.stat().st_size / 2**20
    click.echo(f"Exported {len(manifest['units'])} unit(s) of {manifest['dataset']} ({preset} preset) "
               f"to {path} ({size:.1f} MiB)")


@command
@click.argument("zip_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace existing checkpoints and differing files of that dataset.")
def install_model_entry(zip_path, overwrite):
    """Install a zip written by vfnet_export_model into $vfnet_results.

    Every file is checked against the zip's manifest before anything is moved into place;
    zips with absolute or '..' paths are refused. Existing checkpoints of the dataset are
    never replaced without --overwrite.
    """
    folder = install_model(zip_path, overwrite=overwrite)
    manifest = read_manifest(zip_path)
    click.echo(f"Installed {len(manifest['units'])} unit(s) of {manifest['dataset']} ({manifest['preset']} preset) "
               f"into {folder}")
    click.echo(f"Predict with: vfnet_predict -d {manifest['dataset']} --preset {manifest['preset']} -i IN -o OUT")
