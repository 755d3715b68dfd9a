"""``make demo``: the whole pipeline on a small synthetic dataset, or on an MSD task (``--data``).

dataset → plan (holdout) → the three 2D views → fusion set → VFN → cross-validation table →
predict the test cases → evaluate → report, with a small time budget (:data:`DEMO_PRESET`).
Run as ``python -m vfnet.demo --workdir vfnet_demo [--data <MSD task folder>]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.demo_data import make_demo_dataset
from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess, plan_summary
from vfnet.views import VIEWS

# A 6-minute budget for the whole holdout plan; the demo trains half of its 2D units (not the
# deployment units "all"), so training takes about 3 minutes.
DEMO_PRESET = "budget6"


def _use_workdir(workdir: Path) -> None:
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "preprocessed"), ("vfnet_results", "results")):
        os.environ[var] = str(workdir / sub)
        (workdir / sub).mkdir(parents=True, exist_ok=True)


def _test_inputs(raw: Path, workdir: Path, test_cases: list[str], file_ending: str) -> tuple[Path, Path]:
    """(images, labels) to predict and score: the dataset's labelled test set, else its held-out subset C."""
    if (raw / "imagesTs").is_dir() and (raw / "labelsTs").is_dir():
        return raw / "imagesTs", raw / "labelsTs"
    images, labels = workdir / "test_images", workdir / "test_labels"
    for folder in (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    for case in test_cases:
        for source, target in ((raw / "imagesTr" / f"{case}_0000{file_ending}", images / f"{case}_0000{file_ending}"),
                               (raw / "labelsTr" / f"{case}{file_ending}", labels / f"{case}{file_ending}")):
            if not target.exists():
                target.symlink_to(source.resolve())
    return images, labels


def run_demo(workdir: Path, data: Path | None = None, preset: str = DEMO_PRESET) -> dict:
    """Run every stage in order and return where each result is."""
    from vfnet.evaluation.crossval import crossval, crossval_markdown
    from vfnet.evaluation.evaluate import evaluate_folders
    from vfnet.pipeline.units import train_2d_unit, train_vfn_unit
    from vfnet.prediction.predict import predict
    from vfnet.reporting.report import make_report

    start = time.perf_counter()
    workdir = Path(workdir).resolve()
    _use_workdir(workdir)
    results: dict[str, str] = {}

    def step(title: str) -> None:
        print(f"\n=== [{time.perf_counter() - start:6.1f} s] {title}", flush=True)

    if data is None:
        step("Writing the synthetic demo dataset")
        raw = make_demo_dataset(paths.raw_root())
    else:
        from dataset_conversion.msd import convert_msd

        step(f"Converting {data}")
        raw = convert_msd(Path(data))
    results["raw dataset"] = str(raw)
    dataset = raw.name

    step("Planning and preprocessing (holdout split: A trains the views, B the VFN, C tests)")
    plan = plan_and_preprocess(dataset, split_mode="holdout")
    run = plan.pop("_run")
    print(plan_summary(plan))
    results["plan"] = str(Path(run["folder"]) / "plans.json")

    for view in VIEWS:
        step(f"Training the {view} 2D network (vfnet_train 2d {view} holdout --preset {preset})")
        unit = train_2d_unit(dataset, view, "holdout", preset, resume=True)
        print(f"  {view}: mean Dice on subsets B and C = {read_json(unit / 'summary.json')['mean_dice']:.3f}")
        results[f"2D {view}"] = str(unit)

    step(f"Building the fusion set and training the VFN (vfnet_train vfn holdout --preset {preset})")
    results["VFN"] = str(train_vfn_unit(dataset, "holdout", preset, resume=True))

    step("Cross-validating every fusion method on subset C (vfnet_crossval)")
    table = crossval(dataset, preset)
    print(crossval_markdown(table))
    results["crossval table"] = str(paths.results_root() / dataset / preset / "crossval" / "crossval.md")

    images, labels = _test_inputs(raw, workdir, read_json(Path(run["folder"]) / "splits.json")["folds"]["C"],
                                  read_json(raw / "dataset.json").get("file_ending", ".nii.gz"))
    predictions = workdir / "predictions"
    step(f"Predicting {images} (vfnet_predict)")
    report = predict(images, predictions, dataset, preset, overwrite=True)
    results["predictions"] = str(predictions)
    if report.failed:
        print(f"  failed: {report.failed}")

    step(f"Evaluating against {labels} (vfnet_evaluate)")
    summary = evaluate_folders(labels, predictions, labels=read_json(raw / "dataset.json")["labels"],
                               output_dir=workdir / "evaluation", quiet=True)
    results["evaluation"] = str(workdir / "evaluation" / "summary.md")
    overall = summary["summary"]["overall"]["dice"]
    print(f"  mean Dice of {overall['n']} test predictions: {overall['mean']:.3f} ± {overall['std']:.3f}")

    step("Writing the report (vfnet_report)")
    results["report"] = str(make_report(dataset, preset) / "index.md")

    total = time.perf_counter() - start
    print(f"\n=== Demo finished in {total / 60:.1f} min. Results:")
    for what, where in results.items():
        print(f"  {what:<15}: {where}")
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("vfnet_demo"), help="where the demo writes everything")
    parser.add_argument("--data", type=Path, default=None, help="an MSD task folder instead of the synthetic data")
    parser.add_argument("--preset", default=DEMO_PRESET,
                        help="training preset (default: a 6-minute budget for the units the demo trains)")
    args = parser.parse_args(argv)
    from vfnet.errors import VfnetError

    try:
        run_demo(args.workdir, args.data, args.preset)
    except VfnetError as exc:
        raise SystemExit(f"Error: {exc}") from None


if __name__ == "__main__":
    main()
