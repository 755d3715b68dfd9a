"""vfnet_report."""

from __future__ import annotations

from pathlib import Path

import click

from vfnet.reporting.report import make_report
from vfnet.views import VIEWS
from vfnet_cli.common import command, dataset_option, quiet_option, trained_preset_option, use_trained_preset


@command
@dataset_option
@trained_preset_option
@click.option("--cases", multiple=True,
              help="Held-out cases to draw (repeat or comma-separate: --cases a,b). Default: chosen by VFN gain.")
@click.option("--num-cases", type=int, default=2, show_default=True,
              help="Cases to choose when --cases is not given: largest VFN gain over majority, largest loss, ...")
@click.option("--slice-view", type=click.Choice(list(VIEWS)), default="axial", show_default=True,
              help="Plane of the case figure, through the middle of the organ.")
@click.option("-o", "--output", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder. Default: $vfnet_results/TaskXX_Name/<preset>/report.")
@quiet_option
def report_entry(dataset, preset, cases, num_cases, slice_view, out_dir, quiet):
    """Figures of held-out cases in the style of the paper's Figure 2, and every unit's training curves.

    One row per case: the image slice through the middle of the organ, the ground truth,
    each view's 2D network alone, majority voting and the VFN, each with its Dice. Cases are
    drawn with the maps and VFN of the fold that held them out (as vfnet_crossval scores
    them); by default the cases where the VFN gains most and loses most against majority
    voting, read from crossval.json. Every unit's progress.png is gathered under curves/,
    and index.md lists the figure, the cross-validation table and the curves.
    """
    chosen = [c.strip() for text in cases for c in text.split(",") if c.strip()] or None
    preset = use_trained_preset(dataset, preset)
    folder = make_report(dataset, preset=preset, cases=chosen, num_cases=num_cases, out_dir=out_dir, quiet=quiet,
                         slice_view=slice_view)
    click.echo(f"Report written to {folder / 'index.md'}")
