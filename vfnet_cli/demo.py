"""vfnet_make_demo_dataset."""

from __future__ import annotations

import click

from vfnet import paths
from vfnet.demo_data import DEMO_TASK, make_demo_dataset
from vfnet_cli.common import command


@command
@click.option("--train", "num_train", type=int, default=16, show_default=True, help="Labelled training cases.")
@click.option("--test", "num_test", type=int, default=4, show_default=True,
              help="Labelled test cases (imagesTs/ and labelsTs/) for later evaluation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the synthetic volumes.")
@click.option("--name", "task", default=DEMO_TASK, show_default=True, help="Dataset folder name.")
def make_demo_dataset_entry(num_train, num_test, seed, task):
    """Write a small synthetic dataset into $vfnet_raw: organ-like shapes in noisy volumes.

    Each case is a single-channel volume with an ellipsoid 'organ' holding a brighter 'lesion',
    stored with 2 mm slices; labels follow the raw layout (labelsTr/, labelsTs/).
    """
    target = make_demo_dataset(paths.raw_root(), num_train=num_train, num_test=num_test, seed=seed, task=task)
    click.echo(f"Wrote {num_train} training and {num_test} test cases -> {target}")
