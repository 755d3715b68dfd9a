"""vfnet_evaluate."""

from __future__ import annotations

import sys

import click

from vfnet.evaluation.evaluate import evaluate_folders, labels_from_dataset
from vfnet.measures.stats import format_pvalue
from vfnet_cli.common import command, processes_option, quiet_option


@command
@click.option("-ref", "--reference", "-r", "reference_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of reference label files (NIfTI, NRRD or MHA), e.g. labelsTs (-r also works).")
@click.option("-pred", "--prediction", "prediction_dir", default=None, type=click.Path(file_okay=False),
              help="Folder of predicted label files with the same case names (any of those formats); "
                   "required.")
@click.option("-p", "old_prediction_dir", default=None, hidden=True, type=click.Path(file_okay=False),
              help="Old spelling of -pred (in nnU-Net -p names plans).")
@click.option("-d", "--dataset", default=None,
              help="Dataset (4, Task04 or Task04_Hippocampus) whose dataset.json names the labels. "
                   "Default: every non-zero value present, named label_<value>.")
@click.option("--compare", "compare_dir", default=None, type=click.Path(file_okay=False),
              help="A second prediction folder: adds paired t-test and Wilcoxon p-values (PRED vs this).")
@click.option("-o", "--output", "output_dir", default=None, type=click.Path(file_okay=False),
              help="Where summary.json, summary.md and boxplot.png go. Default: the prediction folder.")
@click.option("--allow-missing", is_flag=True,
              help="Exit 0 even when reference cases have no prediction (they still score Dice 0).")
@processes_option
@quiet_option
def evaluate_entry(reference_dir, prediction_dir, old_prediction_dir, dataset, compare_dir, output_dir, allow_missing, num_processes,
                   quiet):
    """Dice, HD95 (mm) and volume difference (ml) of predicted label maps against references.

    Cases are paired by file name without extension. Labels come from the dataset.json of -d
    (looked up in $vfnet_results, then $vfnet_raw); without -d every non-zero value present
    is evaluated as label_<value>. A case's overall score is its mean Dice over labels;
    summary.md gives, per label and overall, mean ± std, min, Q1, median, Q3 and max (the
    paper's Table 1). A reference case without a prediction is reported as missing and
    scores Dice 0, and the command then exits 1 unless --allow-missing. A prediction of another
    size than its reference is scored as failed (Dice 0) and named, the other cases go on, and
    the command exits 1.

    \b
    Empty masks (per case and label):
      reference and prediction both empty   Dice 1, HD95 0
      only one of them empty                Dice 0, HD95 undefined (null in summary.json;
                                            left out of HD95 statistics and counted as n_nan)
    """
    prediction_dir = prediction_dir or old_prediction_dir
    if not prediction_dir:
        raise click.UsageError("name the prediction folder with -pred")
    labels = labels_from_dataset(dataset) if dataset is not None else None
    summary = evaluate_folders(reference_dir, prediction_dir, labels=labels, compare_dir=compare_dir,
                               output_dir=output_dir, num_processes=num_processes, quiet=quiet)
    methods = [summary] + ([summary["compare"]] if "compare" in summary else [])
    for method in methods:
        click.echo(f"{method['name']}: {summary['num_cases']} case(s), {len(method['missing'])} missing")
        for name, stats in method["summary"].items():
            dice = stats["dice"]
            click.echo(f"  {name:<16} Dice {100 * dice['mean']:6.2f} ± {100 * dice['std']:5.2f} %"
                       f"  (median {100 * dice['median']:6.2f}, min {100 * dice['min']:6.2f})")
        if method["missing"]:
            click.echo(f"  missing predictions: {', '.join(method['missing'])}")
        for case, reason in method.get("failed", {}).items():
            click.echo(f"  FAILED {case}: {reason}", err=True)
    for name, test in summary.get("paired_tests", {}).items():
        click.echo(f"paired {name:<16} mean difference {100 * test['mean_difference']:+.2f} % points, "
                   f"t-test p {format_pvalue(test['t_test_p'])}, Wilcoxon p {format_pvalue(test['wilcoxon_p'])}")
    warnings = sum(len(e["warnings"]) for m in methods for e in m["cases"].values())
    if warnings:
        click.echo(f"{warnings} warning(s), listed in summary.md", err=True)
    for path in summary["output_files"].values():
        click.echo(f"wrote {path}")
    missing = sum(len(m["missing"]) for m in methods)
    if any(m.get("failed") for m in methods) or (missing and not allow_missing):
        if missing and not allow_missing:
            click.echo(f"{missing} prediction(s) missing (scored Dice 0); pass --allow-missing to accept that",
                       err=True)
        sys.exit(1)
