"""vfnet_convert_msd and vfnet_extract_organs."""

from __future__ import annotations

from pathlib import Path

import click

from dataset_conversion.msd import convert_msd
from dataset_conversion.organs import extract_organs
from vfnet_cli.common import command, quiet_option


@command
@click.option("-i", "--input", "source", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MSD task folder (imagesTr/, labelsTr/, dataset.json; imagesTs/ optional).")
@click.option("--id", "task_id", type=int, default=None,
              help="Dataset id of the converted task (default: the number in the folder name).")
@quiet_option
def convert_msd_entry(source, task_id, quiet):
    """Convert a Medical Segmentation Decathlon task into $vfnet_raw/TaskXX_Name.

    4D images are split into one file per channel (<case>_0000.nii.gz, ...), labels are copied,
    and dataset.json is rewritten with nnU-Net v2 keys.
    """
    target = convert_msd(source, task_id, quiet=quiet)
    click.echo(f"Converted {source} -> {target}")


@command
@click.option("-i", "--images", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of images (or one image file).")
@click.option("-l", "--labels", "label_maps", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of multi-label maps with the same case names (or one file).")
@click.option("--labels-json", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON mapping label values to organ names, e.g. {\"7\": \"pancreas\"}.")
@click.option("--organs", required=True, multiple=True,
              help="Organ names to keep, one label each, in order; 'a+b' merges several into one label. "
                   "Repeat the option or give several names after it.")
@click.option("-n", "--name", "task", default=None, help="Name of the new dataset, e.g. Task05_Pancreas or "
              "Dataset005_Pancreas.")
@click.option("-o", "--output", "old_task", default=None, hidden=True, help="Old spelling of --name.")
@click.argument("more_organs", nargs=-1)
@quiet_option
def extract_organs_entry(images, label_maps, labels_json, organs, task, old_task, more_organs, quiet):
    """Build a new task from multi-label maps by choosing organs by name.

    Example: vfnet_extract_organs -i ct/ -l maps/ --labels-json names.json
    --organs pancreas "adrenal_gland_left+adrenal_gland_right" -n Task10_Abdomen
    """
    task = task or old_task
    if not task:
        raise click.UsageError("name the new dataset with -n, e.g. -n Task10_Abdomen")
    target = extract_organs(images, label_maps, labels_json, list(organs) + list(more_organs), task, quiet=quiet)
    click.echo(f"Wrote {target}")
