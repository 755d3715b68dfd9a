"""Integrity check of a raw dataset: every problem of every case in one report.

Each case is read once; the same read yields the per-case statistics the fingerprint
needs, so checking and fingerprinting cost one pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from vfnet.dataset import DatasetInfo, list_cases, load_dataset_json
from vfnet.errors import DatasetIntegrityError, VfnetError
from vfnet.imageio import POSITION_ATOL_MM, geometry_differences, nifti_raw_check, read_image, to_canonical

INTENSITY_SAMPLES_PER_CASE = 10_000


@dataclass
class CaseReport:
    """Problems found in one case and, when it is sound, its statistics."""

    case_id: str
    problems: list[str] = field(default_factory=list)
    stats: dict | None = None


def _geometry_problems(image: sitk.Image, ref: sitk.Image, name: str, ref_name: str) -> list[str]:
    messages = {
        "size": f"{name}: shape {image.GetSize()} differs from {ref_name} {ref.GetSize()}; "
                "resample or re-export one of them so both have the same grid",
        "spacing": f"{name}: spacing {tuple(round(s, 5) for s in image.GetSpacing())} differs from "
                   f"{ref_name} {tuple(round(s, 5) for s in ref.GetSpacing())}; fix the header",
        "origin": f"{name}: origin differs from {ref_name} by more than {POSITION_ATOL_MM} mm; fix the header",
        "direction": f"{name}: direction differs from {ref_name}; fix the header",
    }
    return [messages[what] for what in geometry_differences(image, ref)]


def _channel_problem(image: sitk.Image, path: Path) -> str | None:
    if image.GetDimension() != 3:
        return (f"{path}: is {image.GetDimension()}D, expected one 3D volume per channel file; "
                "split channels into <case>_0000, <case>_0001, ... (vfnet_convert_msd does this)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        return (f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1; "
                "split channels into separate files")
    return None


def check_case(case_id: str, image_paths: list[Path], label_path: Path, info: DatasetInfo) -> CaseReport:
    """Read one case, list every one of its problems, and gather its statistics when it has none.

    The checks do not stop at a case's first problem: a geometry mismatch does not hide the
    label's values, nor NaN voxels in an image or the label.
    """
    report = CaseReport(case_id)
    images = [_read_checked(path, report, "per channel file") for path in image_paths]
    label = _read_checked(label_path, report, "label file")
    if label is not None:
        for image, path in zip(images, image_paths):
            if image is not None:
                report.problems += _geometry_problems(image[0], label[0], str(path), f"label {label_path.name}")
        label_array, spacing = to_canonical(label[0])
        report.problems += _label_value_problems(label_array, label[1], label_path, info)
    arrays = []
    for image, path in zip(images, image_paths):
        if image is None:
            continue
        array, _ = to_canonical(image[0])
        count = _nonfinite_count(array, image[1])
        if count:
            report.problems.append(f"{path}: {count} voxels are NaN or Inf; replace them before training")
        arrays.append(array)
    if report.problems:
        return report
    report.stats = _case_stats(arrays, label_array.astype(np.int16), spacing, info)
    return report


def _read_checked(path: Path, report: CaseReport, what: str) -> tuple[sitk.Image, int] | None:
    """(image, count of NaN/Inf in the raw NIfTI data), or None with the problem added to ``report``."""
    try:
        raw_nonfinite = nifti_raw_check(path)
        image = read_image(path, verify=False)
    except VfnetError as exc:
        report.problems.append(str(exc))
        return None
    problem = _channel_problem(image, path)
    if problem:
        report.problems.append(problem.replace("per channel file", what))
        return None
    return image, raw_nonfinite


def _nonfinite_count(array: np.ndarray, raw_count: int) -> int:
    """NaN/Inf voxels: ITK's NIfTI reader turns them into 0, so the raw count can be the larger."""
    if np.issubdtype(array.dtype, np.floating):
        return max(int(np.size(array) - np.count_nonzero(np.isfinite(array))), raw_count)
    return raw_count


def _label_value_problems(label: np.ndarray, raw_nonfinite: int, label_path: Path, info: DatasetInfo) -> list[str]:
    """Non-finite, non-integer and undeclared label values, each its own problem."""
    problems = []
    nonfinite = _nonfinite_count(label, raw_nonfinite)
    if nonfinite:
        problems.append(f"{label_path}: {nonfinite} voxels are NaN or Inf; a label map holds integer label "
                        "values everywhere, re-export it")
    values = np.unique(label)
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    fractional = [float(v) for v in values if v != np.round(v)][:5]
    if fractional:
        problems.append(f"{label_path}: label values must be integers, found {fractional}; "
                        "round them or re-export the label map")
    declared = set(info.labels.values())
    undeclared = sorted({int(v) for v in values if v == np.round(v) and int(v) not in declared})
    if undeclared:
        problems.append(f"{label_path}: label values {undeclared} are not declared in dataset.json "
                        f"(declared: {sorted(declared)}); add them to 'labels' or remove them")
    return problems


def _case_stats(arrays: list[np.ndarray], label: np.ndarray, spacing: tuple, info: DatasetInfo) -> dict:
    foreground = label > 0
    rng = np.random.default_rng(abs(hash(label.shape)) % 2**32)
    samples = []
    for array in arrays:
        values = array[foreground].astype(np.float64)
        if values.size > INTENSITY_SAMPLES_PER_CASE:
            values = rng.choice(values, INTENSITY_SAMPLES_PER_CASE, replace=False)
        samples.append(values)
    counts = {str(v): int(np.count_nonzero(label == v)) for v in info.labels.values()}
    if foreground.any():
        coords = np.nonzero(foreground)
        bbox = [int(c.max() - c.min() + 1) for c in coords]
    else:
        bbox = [0, 0, 0]
    return {
        "shape": [int(s) for s in label.shape],
        "spacing": [float(s) for s in spacing],
        "voxel_counts": counts,
        "foreground_bbox": bbox,
        "intensity_samples": samples,
        "intensity_range": [[float(a.min()), float(a.max())] for a in arrays],
    }


def _check_case_args(args):
    return check_case(*args)


def verify_dataset(folder: Path, num_processes: int = 2, quiet: bool = False) -> tuple[DatasetInfo, list[CaseReport]]:
    """Check a raw dataset folder; raise one :class:`DatasetIntegrityError` listing every problem.

    Returns:
        The dataset's info and one report (with statistics) per training case.
    """
    folder = Path(folder)
    try:
        info = load_dataset_json(folder)
    except VfnetError as exc:
        raise DatasetIntegrityError([str(exc)], folder.name) from None
    images, labels, stray = list_cases(folder, info.file_ending)
    problems = [f"{p}: does not follow <case>_XXXX{info.file_ending} (images) or <case>{info.file_ending} "
                "(labels); rename or remove it" for p in stray]
    if not images and not labels:
        problems.append(f"{folder}: no training cases in imagesTr/ and labelsTr/ (empty dataset)")
    for case_id in sorted(set(images) - set(labels)):
        problems.append(f"{folder / 'imagesTr' / (case_id + '_0000' + info.file_ending)}: image without label; "
                        f"add labelsTr/{case_id}{info.file_ending} or remove the image")
    for case_id in sorted(set(labels) - set(images)):
        problems.append(f"{labels[case_id]}: label without image; add imagesTr/{case_id}_0000{info.file_ending} "
                        "or remove the label")
    jobs = []
    for case_id in sorted(set(images) & set(labels)):
        channels = images[case_id]
        expected = list(range(info.num_channels))
        if sorted(channels) != expected:
            missing = [c for c in expected if c not in channels]
            extra = [c for c in channels if c not in expected]
            what = []
            if missing:
                what.append("missing " + ", ".join(f"{case_id}_{c:04d}{info.file_ending}" for c in missing))
            if extra:
                what.append("unexpected " + ", ".join(f"{case_id}_{c:04d}{info.file_ending}" for c in extra))
            problems.append(f"{folder / 'imagesTr'}: case {case_id} has {len(channels)} channel file(s), "
                            f"dataset.json declares {info.num_channels} ({'; '.join(what)})")
            continue
        jobs.append((case_id, [channels[c] for c in expected], labels[case_id], info))
    reports = _run_parallel(jobs, num_processes, quiet)
    for report in reports:
        problems += report.problems
    if problems:
        raise DatasetIntegrityError(problems, folder.name)
    return info, reports


def _run_parallel(jobs: list, num_processes: int, quiet: bool) -> list[CaseReport]:
    bar = {"total": len(jobs), "desc": "checking cases", "unit": "case", "disable": True if quiet or not jobs else None, "leave": False}
    if num_processes <= 1 or len(jobs) < 4:
        return [check_case(*job) for job in tqdm(jobs, **bar)]
    with get_context().Pool(num_processes) as pool:
        return list(tqdm(pool.imap(_check_case_args, jobs, chunksize=4), **bar))
