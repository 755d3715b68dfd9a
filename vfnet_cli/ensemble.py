"""vfnet_ensemble and vfnet_apply_postprocessing."""

from __future__ import annotations

from pathlib import Path

import click

from vfnet.fusion.apply_postprocessing import apply_postprocessing_to_folder
from vfnet.inference.ensemble import ensemble_folders
from vfnet_cli.common import command, dataset_option, quiet_option, trained_preset_option, use_trained_preset


@command
@click.option("-i", "--input", "sources", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Two or more folders written by vfnet_predict --save-probabilities: -i pred_a pred_b.")
@click.option("-o", "--output", "target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the ensembled <case>.nii.gz.")
@click.option("--save-probabilities", is_flag=True,
              help="Also write the averaged <case>.npz and <case>.json (to ensemble again).")
@click.option("-np", "--num-processes", type=click.IntRange(1), default=2, show_default=True,
              help="Cases ensembled at once (threads).")
@quiet_option
def ensemble_entry(sources, target, save_probabilities, num_processes, quiet):
    """Average the saved probabilities of several predictions of the same cases and write their labels.

    Each case must have <case>.npz and <case>.json in every input folder, on the same voxel
    grid and with the same labels. The probabilities are averaged with equal weights and the
    argmax is written in the input's geometry. No post-processing is applied: run
    vfnet_apply_postprocessing on the result when wanted.
    """
    cases = ensemble_folders(sources, target, save_probabilities=save_probabilities, num_processes=num_processes,
                             quiet=quiet)
    click.echo(f"Ensembled {len(cases)} case(s) of {len(sources)} folders into {target}")


@command
@click.option("-i", "--input", "source", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of label files (e.g. predicted with --no-postprocess, or ensembled).")
@click.option("-o", "--output", "target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the post-processed files (same names, same geometry).")
@dataset_option
@trained_preset_option
@quiet_option
def apply_postprocessing_entry(source, target, dataset, preset, quiet):
    """Apply the post-processing vfnet_crossval chose to a folder of existing label files.

    For each label that crossval found improved by it (best_method.json, postprocess_labels),
    only the label's largest connected component is kept; other labels are left unchanged.
    """
    preset = use_trained_preset(dataset, preset)
    files, values = apply_postprocessing_to_folder(source, target, dataset, preset, quiet=quiet)
    what = f"largest component kept for label value(s) {', '.join(map(str, values))}" if values else \
        "crossval chose no post-processing: files copied unchanged"
    click.echo(f"Wrote {len(files)} file(s) to {target} ({what})")
