"""vfnet_plan_and_preprocess."""

from __future__ import annotations

import click

from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess, plan_summary
from vfnet_cli.common import command, dataset_option, processes_option, quiet_option


@command
@dataset_option
@click.option("--verify", is_flag=True, help="Only run the integrity check and report; write nothing.")
@processes_option
@click.option("--num-folds", "--folds", "folds", type=int, default=4, show_default=True,
              help="Number of folds K (CCA needs K >= 3). (--folds, its old name, still works; -f elsewhere names "
                   "fold units.)")
@click.option("--split", "split_mode", type=click.Choice(["cca", "holdout"]), default=None,
              help="cca (cross-cross-augmentation over K folds) or holdout (subsets A/B/C). "
                   "Default: cca below 250 cases, holdout above.")
@quiet_option
def plan_and_preprocess_entry(dataset, verify, num_processes, folds, split_mode, quiet):
    """Check a raw dataset, write its fingerprint, plan and splits, and preprocess it.

    Reads $vfnet_raw/TaskXX_Name and writes $vfnet_preprocessed/TaskXX_Name/{fingerprint,plans,splits}.json
    and arrays/. The integrity check runs first: when it finds problems it lists every one and
    exits with code 2 without writing anything. A rerun skips cases already preprocessed with
    the same plan.
    """
    plan = plan_and_preprocess(dataset, num_processes=num_processes, num_folds=folds,
                               split_mode=split_mode, verify_only=verify, quiet=quiet)
    if verify:
        click.echo("Integrity check passed: no problems found.")
        return
    run = plan.pop("_run")
    click.echo(plan_summary(plan))
    click.echo(f"Preprocessed {run['preprocessed']} case(s), {run['skipped']} already current, "
               f"in {run['seconds']} s -> {run['folder']}")
