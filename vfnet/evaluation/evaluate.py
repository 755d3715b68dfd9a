"""vfnet_evaluate as a library call: compare a folder of predicted label maps with references.

Cases are paired by file name without extension (``case.nii.gz`` ↔ ``case.nrrd`` works).
Metrics and the empty-mask convention are those of :mod:`vfnet.measures.metrics`; a
reference case without a prediction is reported as missing and scores Dice 0 on every
label (HD95 undefined). Results go to ``summary.json`` (NaN written as null), ``summary.md``
and ``boxplot.png`` in the output folder, which defaults to the prediction folder as in
nnU-Net and may never be the reference folder.
"""

from __future__ import annotations

import json
import math
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from vfnet import paths
from vfnet.atomic import atomic_path
from vfnet.dataset import load_dataset_json
from vfnet.errors import DatasetNotFoundError, ImageReadError, VfnetError
from vfnet.imageio import IMAGE_SUFFIXES, geometry_differences, read_image, strip_suffix, to_canonical
from vfnet.measures.metrics import evaluate_case, label_metrics
from vfnet.measures.stats import (
    TABLE1_COLUMNS,
    format_pvalue,
    markdown_table,
    method_table,
    paired_tests,
    stats_row,
    summarize,
)

CONVENTION = ("Dice: 1 when reference and prediction are both empty, 0 when only one is. "
              "HD95: 0 when both are empty, undefined (null) when only one is; undefined values are left "
              "out of the statistics and counted as n_nan. A missing prediction scores Dice 0 on every label.")
SUMMARY_METRICS = ("dice", "hd95", "volume_difference_ml", "relative_volume_difference")


def list_label_files(folder: Path) -> dict[str, Path]:
    """Label files of a folder by case name (NIfTI, NRRD, MHA; hidden files are skipped).

    Raises:
        VfnetError: the folder is missing, or two files share a case name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VfnetError(f"{folder}: no such folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        case = strip_suffix(path.name)
        if case in files:
            raise VfnetError(f"{folder}: case '{case}' has two files, {files[case].name} and {path.name}; "
                             "keep one")
        files[case] = path
    return files


def labels_from_dataset(dataset: str | int) -> dict[str, int]:
    """Foreground labels of a dataset's dataset.json, looked up in $vfnet_results, then $vfnet_raw."""
    roots = (paths.results_root(), paths.raw_root(), paths.preprocessed_root())
    for root in roots:
        try:
            folder = root / paths.resolve_dataset(dataset, root)
        except DatasetNotFoundError:
            continue
        if (folder / "dataset.json").is_file():
            return load_dataset_json(folder).foreground_labels
    found = sorted({name for root in roots for name in paths.list_datasets(root)})
    raise DatasetNotFoundError(f"dataset '{dataset}' has no dataset.json in {', '.join(map(str, roots))}; "
                               f"datasets there: {', '.join(found) or 'none'}. "
                               "Leave -d out to evaluate every label value present.")


def _read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...], object]:
    """(integer array, spacing per array axis, image) of a label file, reoriented to LPS when 3D."""
    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel, "
                             "expected a label map")
    if image.GetDimension() == 3:
        array, spacing = to_canonical(image)
    else:
        array, spacing = sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise ImageReadError(f"{path}: holds non-integer values; expected a label map, not probabilities")
        array = array.astype(np.int64)
    return array, tuple(float(s) for s in spacing), image


def _geometry_warnings(ref_image, pred_image, ref_path: Path, pred_path: Path) -> list[str]:
    messages = {
        "spacing": f"{pred_path.name}: spacing {pred_image.GetSpacing()} differs from {ref_path.name} "
                   f"{ref_image.GetSpacing()}; the reference's spacing is used",
        "origin": f"{pred_path.name}: origin differs from {ref_path.name}",
        "direction": f"{pred_path.name}: direction differs from {ref_path.name}; both were reoriented to LPS",
    }
    return [messages[what] for what in geometry_differences(pred_image, ref_image) if what in messages]


def missing_label_entry(volume_reference_ml: float = float("nan")) -> dict:
    """Per-label entry of a case whose prediction is missing: Dice 0, everything else undefined."""
    return {"dice": 0.0, "hd95": float("nan"), "volume_reference_ml": volume_reference_ml,
            "volume_prediction_ml": float("nan"), "volume_difference_ml": float("nan"),
            "relative_volume_difference": float("nan")}


def evaluate_pair(case: str, reference_path: Path, prediction_path: Path | None,
                  labels: dict[str, int] | None) -> dict:
    """Metrics of one case. ``labels=None`` evaluates every non-zero value present in either file.

    A prediction whose size differs from the reference's is scored as failed (Dice 0 on every
    label, like a missing one) and its reason kept in ``failed``, so one bad file does not stop
    the evaluation of the others.

    Raises:
        VfnetError: a file cannot be read.
    """
    reference, spacing, ref_image = _read_label_map(reference_path)
    entry: dict = {"reference_file": str(reference_path),
                   "prediction_file": str(prediction_path) if prediction_path else None,
                   "missing": prediction_path is None, "failed": None, "warnings": []}
    present = set(np.unique(reference).tolist())
    prediction = pred_image = None
    if prediction_path is not None:
        prediction, _, pred_image = _read_label_map(prediction_path)
        if prediction.shape != reference.shape:
            entry["failed"] = (f"prediction {prediction_path} has size {pred_image.GetSize()} but reference "
                               f"{reference_path} has size {ref_image.GetSize()}; predictions must be in the "
                               "reference's geometry")
    if prediction_path is None or entry["failed"]:
        wanted = labels if labels is not None else {f"label_{v}": v for v in sorted(present - {0})}
        entry["labels"] = {name: missing_label_entry(float(np.sum(reference == value)) * float(np.prod(spacing))
                                                     / 1000.0) for name, value in wanted.items()}
        entry["mean_dice"] = 0.0
        return entry
    entry["warnings"] = _geometry_warnings(ref_image, pred_image, reference_path, prediction_path)
    present |= set(np.unique(prediction).tolist())
    if labels is None:
        labels = {f"label_{v}": v for v in sorted(present - {0})}
    unknown = sorted(present - {0} - set(labels.values()))
    if unknown:
        entry["warnings"].append(f"values {unknown} are not among the evaluated labels")
    entry.update(evaluate_case(reference, prediction, labels, spacing))
    return entry


def _evaluate_pair_args(args):
    return args[0], evaluate_pair(*args)


def evaluate_prediction_folder(reference_files: dict[str, Path], prediction_dir: Path,
                               labels: dict[str, int] | None, num_processes: int = 1,
                               quiet: bool = False) -> dict:
    """Evaluate one folder of predictions against the reference files (no summary statistics yet)."""
    predictions = list_label_files(prediction_dir)
    jobs = [(case, path, predictions.get(case), labels) for case, path in sorted(reference_files.items())]
    bar = {"total": len(jobs), "desc": f"evaluating {Path(prediction_dir).name}", "unit": "case",
           "disable": True if quiet or not jobs else None, "leave": False}
    if num_processes <= 1 or len(jobs) < 4:
        results = [(job[0], evaluate_pair(*job)) for job in tqdm(jobs, **bar)]
    else:
        with get_context().Pool(num_processes) as pool:
            results = list(tqdm(pool.imap(_evaluate_pair_args, jobs, chunksize=2), **bar))
    return {"prediction_dir": str(prediction_dir), "cases": dict(results),
            "missing": [case for case, _, pred, _ in jobs if pred is None],
            "failed": {case: entry["failed"] for case, entry in results if entry.get("failed")},
            "extra_predictions": sorted(str(predictions[c]) for c in set(predictions) - set(reference_files))}


def _complete_labels(method: dict, labels: dict[str, int]) -> None:
    """Give every case an entry for every label: absent from both files means both empty."""
    both_empty = label_metrics(np.zeros(1, bool), np.zeros(1, bool))
    for entry in method["cases"].values():
        for name in labels:
            if name not in entry["labels"]:
                entry["labels"][name] = (missing_label_entry(0.0) if entry["missing"] or entry.get("failed")
                                         else dict(both_empty))
        entry["labels"] = {name: entry["labels"][name] for name in labels}
        entry["mean_dice"] = float(np.mean([v["dice"] for v in entry["labels"].values()])) if labels else math.nan


def summarize_method(method: dict, labels: dict[str, int]) -> dict:
    """Summary statistics per label (Dice, HD95, volume differences) and overall (mean Dice of a case)."""
    cases = method["cases"].values()
    summary = {name: {metric: summarize([c["labels"][name][metric] for c in cases]) for metric in SUMMARY_METRICS}
               for name in labels}
    summary["overall"] = {"dice": summarize([c["mean_dice"] for c in cases])}
    return summary


def _display_names(prediction_dir: Path, compare_dir: Path | None) -> tuple[str, str | None]:
    first = prediction_dir.resolve().name
    if compare_dir is None:
        return first, None
    second = compare_dir.resolve().name
    if first == second:
        first, second = (f"{p.resolve().parent.name}/{p.resolve().name}" for p in (prediction_dir, compare_dir))
    return (first, second) if first != second else ("prediction", "compare")


def _jsonable(value):
    """NaN and inf become null so summary.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _stats_rows(summary: dict, metric: str, float_format: str = "{:.2f}") -> list[dict]:
    methods = [summary] + ([summary["compare"]] if "compare" in summary else [])
    return [{"method": m["name"], "label": name, **stats_row(m["summary"][name][metric], float_format=float_format)}
            for m in methods for name in summary["labels"]]


def render_markdown(summary: dict, dice_table: str) -> str:
    """summary.md: Table-1-style Dice, HD95, volume differences, paired tests and per-case Dice."""
    methods = [summary] + ([summary["compare"]] if "compare" in summary else [])
    labels = summary["labels"]
    lines = ["# Evaluation", "", f"- Reference: `{summary['reference_dir']}` ({summary['num_cases']} cases)"]
    for m in methods:
        missing = f"; missing: {len(m['missing'])} ({', '.join(m['missing'][:10])})" if m["missing"] else ""
        if m.get("failed"):
            missing += f"; failed (scored Dice 0): {len(m['failed'])} ({', '.join(list(m['failed'])[:10])})"
        lines.append(f"- **{m['name']}**: `{m['prediction_dir']}`{missing}")
    lines += [f"- Labels: {', '.join(f'{name} = {value}' for name, value in labels.items())}", "",
              "## Dice (DSC, %)", "", dice_table,
              "## HD95 (mm)", "", markdown_table(_stats_rows(summary, "hd95"), {"method": "Method", "label": "Label",
                                                                               **TABLE1_COLUMNS}), "",
              "## Volume difference (ml, prediction − reference)", "",
              markdown_table(_stats_rows(summary, "volume_difference_ml", "{:.3f}"),
                             {"method": "Method", "label": "Label", **TABLE1_COLUMNS}), ""]
    if "paired_tests" in summary:
        rows = [{"label": name, "n": t["n"], "diff": t["mean_difference"] * 100,
                 "t": format_pvalue(t["t_test_p"]), "w": format_pvalue(t["wilcoxon_p"])}
                for name, t in summary["paired_tests"].items()]
        lines += [f"## Paired tests: {methods[0]['name']} vs {methods[1]['name']} (Dice per case)", "",
                  markdown_table(rows, {"label": "Label", "n": "n", "diff": "Mean difference (DSC, % points)",
                                        "t": "Paired t-test p", "w": "Wilcoxon p"}), ""]
    for m in methods:
        rows = [{"case": case + (" (missing)" if e["missing"] else "") + (" (failed)" if e.get("failed") else ""),
                 **{name: e["labels"][name]["dice"] * 100 for name in labels}, "mean": e["mean_dice"] * 100}
                for case, e in m["cases"].items()]
        lines += [f"## Per case: {m['name']} (DSC, %)", "",
                  markdown_table(rows, {"case": "Case", **{name: name for name in labels}, "mean": "Mean"}), ""]
    warnings = [w for m in methods for e in m["cases"].values() for w in e["warnings"]]
    warnings += [f"{path}: no reference case of that name (not evaluated)" for m in methods
                 for path in m["extra_predictions"]]
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    lines += ["## Empty masks", "", CONVENTION, ""]
    return "\n".join(lines)


def save_boxplot(dice_by_method: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Box plot of Dice per label and overall, the methods side by side; written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labels = list(dict.fromkeys(name for cases in dice_by_method.values() for d in cases.values() for name in d))
    groups = [*labels, "overall"]
    count = len(dice_by_method)
    width = 0.8 / count
    figure = Figure(figsize=(max(4.0, 1.2 * len(groups) * count + 1.5), 4.0), dpi=100)
    axes = figure.add_subplot()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for index, (method, cases) in enumerate(dice_by_method.items()):
        data = [[100 * d[name] for d in cases.values()] for name in labels]
        data.append([100 * float(np.mean(list(d.values()))) for d in cases.values() if d])
        positions = np.arange(len(groups)) + (index - (count - 1) / 2) * width
        boxes = axes.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                               medianprops={"color": "black"})
        for box in boxes["boxes"]:
            box.set_facecolor(colours[index % len(colours)])
            box.set_alpha(0.7)
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylabel("Dice (%)")
    axes.set_ylim(-2, 102)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(handles=[Patch(facecolor=colours[i % len(colours)], alpha=0.7, label=method)
                         for i, method in enumerate(dice_by_method)], loc="lower left", fontsize="small")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")


def evaluate_folders(reference_dir: str | Path, prediction_dir: str | Path, labels: dict[str, int] | None = None,
                     compare_dir: str | Path | None = None, output_dir: str | Path | None = None,
                     num_processes: int = 1, quiet: bool = False) -> dict:
    """Evaluate predicted label maps against references and write summary.json, summary.md, boxplot.png.

    Args:
        reference_dir: folder of reference label files (NIfTI, NRRD, MHA).
        prediction_dir: folder of predicted label files with the same case names.
        labels: label name → value to evaluate (background is skipped); None evaluates every
            non-zero value present in any file, named ``label_<value>``.
        compare_dir: a second prediction folder; adds paired t-test and Wilcoxon p-values per
            label and overall (``prediction_dir`` first, differences are first − compare).
        output_dir: where the three files go; default ``prediction_dir``. Never ``reference_dir``.
        num_processes: worker processes reading files.
        quiet: no progress bars.

    Returns:
        The content of summary.json (with NaN where it holds null), plus ``"output_files"``.

    Raises:
        VfnetError: a folder is missing, the reference folder holds no label file, the output
            would go into the reference folder, or a prediction's size differs from its reference.
    """
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    compare_dir = Path(compare_dir) if compare_dir is not None else None
    output_dir = Path(output_dir) if output_dir is not None else prediction_dir
    reference_files = list_label_files(reference_dir)
    if not reference_files:
        raise VfnetError(f"{reference_dir}: holds no label file (.nii.gz, .nii, .nrrd, .mha)")
    if _is_within(output_dir, reference_dir):
        raise VfnetError(f"output folder {output_dir} is inside the reference folder {reference_dir}; "
                         "vfnet never writes into references: choose another with -o")
    if labels is not None:
        labels = {name: int(value) for name, value in labels.items() if int(value) != 0}
    methods = [evaluate_prediction_folder(reference_files, prediction_dir, labels, num_processes, quiet)]
    if compare_dir is not None:
        methods.append(evaluate_prediction_folder(reference_files, compare_dir, labels, num_processes, quiet))
    if labels is None:
        values = sorted({int(name.split("_", 1)[1])
                         for method in methods for entry in method["cases"].values() for name in entry["labels"]})
        labels = {f"label_{value}": value for value in values}
    if not labels:
        raise VfnetError(f"nothing to evaluate: no label value other than 0 in {reference_dir} or the predictions, "
                         "and none given")
    for method in methods:
        _complete_labels(method, labels)
        method["summary"] = summarize_method(method, labels)
    names = _display_names(prediction_dir, compare_dir)
    summary = {"reference_dir": str(reference_dir), "labels": labels, "convention": CONVENTION,
               "num_cases": len(reference_files), "name": names[0], **methods[0]}
    if compare_dir is not None:
        summary["compare"] = {"name": names[1], **methods[1]}
        first, second = methods[0]["cases"], methods[1]["cases"]
        cases = sorted(first)
        tests = {name: paired_tests([first[c]["labels"][name]["dice"] for c in cases],
                                    [second[c]["labels"][name]["dice"] for c in cases]) for name in labels}
        tests["overall"] = paired_tests([first[c]["mean_dice"] for c in cases], [second[c]["mean_dice"] for c in cases])
        summary["paired_tests"] = tests
    dice_by_method = {m_name: {case: {name: e["labels"][name]["dice"] for name in labels}
                               for case, e in method["cases"].items()}
                      for m_name, method in zip(names, methods)}
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": output_dir / "summary.json", "markdown": output_dir / "summary.md",
             "boxplot": output_dir / "boxplot.png"}
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text(render_markdown(summary, method_table(dice_by_method)), encoding="utf-8")
    save_boxplot(dice_by_method, files["boxplot"])
    summary["output_files"] = {key: str(path) for key, path in files.items()}
    return summary
