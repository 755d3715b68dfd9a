"""vfnet_build_fusion_set, vfnet_check_leakage and vfnet_crossval."""

from __future__ import annotations

import sys

import click

from vfnet.fusion.fusion_set import build_fusion_set
from vfnet.fusion.leakage import find_leaks
from vfnet_cli.common import command, dataset_option, quiet_option, trained_preset_option, use_trained_preset


@command
@dataset_option
@click.option("-f", "--fold", "vfn_unit", required=True,
              help="VFN unit whose training set to build: a fold (0..K-1), 'all' (deployment), or 'holdout'.")
@trained_preset_option
@quiet_option
def build_fusion_set_entry(dataset, vfn_unit, preset, quiet):
    """Build the VFN's training set from held-out 2D probability maps.

    For test fold k, every case outside fold k gets the three view maps of the CCA unit that
    left out both k and the case's own fold (cross-cross-augmentation); with -f all, every
    case gets the maps of the fold unit that predicted it (for the VFN used on new data); in
    holdout mode (-f holdout), subset B gets the maps of the 2D units trained on subset A.
    Samples are cropped to the foreground box plus the planned margin; manifest.json names
    the unit behind every map. Output: $vfnet_preprocessed/TaskXX_Name/fusion/<preset>/<fold>/.
    """
    preset = use_trained_preset(dataset, preset)
    folder = build_fusion_set(dataset, vfn_unit, preset=preset, quiet=quiet)
    click.echo(f"Fusion set written to {folder}")


@command
@dataset_option
@click.option("--preset", default=None, help="Check only this preset's models (default: every preset found).")
def check_leakage_entry(dataset, preset):
    """Prove that no model behind a fold's numbers trained on a case of that fold.

    Reads the fusion-set manifests and every unit's recorded training cases (unit.json) and
    checks, per test fold, the 2D units that predict it, the units behind its VFN's training
    maps, and its VFN. Exits 1 and names each case and unit when one leaked.
    """
    leaks, checks = find_leaks(dataset, preset)
    if leaks:
        click.echo(f"LEAKAGE: {len(leaks)} problem(s):", err=True)
        for leak in leaks:
            click.echo(f"  - {leak}", err=True)
        sys.exit(1)
    click.echo(f"no leakage: {checks} unit record(s) checked against their test folds")


@command
@dataset_option
@trained_preset_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the VFNs run: auto (CUDA when available), cpu or cuda.")
@quiet_option
def crossval_entry(dataset, preset, device, quiet):
    """Cross-validate every fusion method on every held-out case and write a Table-1-style summary.

    For each test fold: each view alone, majority, mean, STAPLE, VFN and VFN without image
    (those whose models exist), each with and without largest-component post-processing;
    Dice per label and overall (mean ± std, min, quartiles, max), time per case, and paired
    t-test / Wilcoxon p-values of VFN against majority. Writes crossval.json, crossval.md and
    best_method.json (the default fusion of vfnet_predict) to $vfnet_results/TaskXX/<preset>/crossval/.
    """
    from vfnet.evaluation.crossval import crossval, crossval_markdown

    preset = use_trained_preset(dataset, preset)
    result = crossval(dataset, preset, device=device, quiet=quiet)
    click.echo(crossval_markdown(result))
