"""DICOM series folders: which series a folder means, and refusing series with missing or uneven slices.

Rules (also in the README):

* A folder holding one series is that series.
* A folder holding several uses the one named by ``series_uid`` (``vfnet_predict --series UID``);
  without it, the series with the most slices, ties broken by the smallest UID. The choice is
  described by :func:`series_note` so the user sees which was used.
* The slices must sit at evenly spaced positions along the slice normal (ImagePositionPatient
  projected on the normal of ImageOrientationPatient, within 1 % of the median step). A missing
  or duplicated slice, a position or orientation tag that is absent, or slices of different
  orientations are a :class:`~vfnet.errors.ImageReadError` naming the folder and the gap: ITK
  would otherwise stack the slices at a uniform spacing and put every label off its real slice.

Example:
    >>> image = read_dicom_series(Path("patient_01"))            # the largest series
    >>> image = read_dicom_series(Path("patient_01"), "1.2.3.4")  # a chosen one
"""

from __future__ import annotations

import locale
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfnet.errors import ImageReadError

POSITION_TAG, ORIENTATION_TAG = "0020|0032", "0020|0037"
STEP_RTOL = 0.01


@contextmanager
def gdcm_scan(quiet: bool = True):
    """Around GDCM's folder scans: its warnings hidden, and the process's locale kept.

    GDCM sets the C locale while it scans a folder and leaves it so; afterwards Python would
    write every text file (logs, Markdown with "−" or "±") as ASCII and fail. Warnings such
    as "No Series were found" for an ordinary folder are answers, not problems.
    """
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    saved = locale.setlocale(locale.LC_ALL)
    sitk.ProcessObject.SetGlobalWarningDisplay(shown and not quiet)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
        locale.setlocale(locale.LC_ALL, saved)


def series_in(folder: Path) -> dict[str, list[str]]:
    """Series UID → its slice files (sorted by GDCM along the slice normal) of a folder."""
    with gdcm_scan():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}


def choose_series(folder: Path, series_uid: str | None = None) -> tuple[str, list[str]]:
    """(UID, slice files) of the series a folder means (see the module's rules).

    Raises:
        ImageReadError: no series, or ``series_uid`` is not one of the folder's series.
    """
    folder = Path(folder)
    series = series_in(folder)
    if not series:
        raise ImageReadError(f"{folder}: folder holds no DICOM series")
    if series_uid is not None:
        if series_uid not in series:
            raise ImageReadError(f"{folder}: no DICOM series {series_uid}; it holds {', '.join(sorted(series))}")
        return series_uid, series[series_uid]
    uid = min(series, key=lambda u: (-len(series[u]), u))
    return uid, series[uid]


def series_note(folder: Path, series_uid: str | None = None) -> str | None:
    """Which series of a folder holding several is used, and how to choose another; None for one series."""
    series = series_in(Path(folder))
    if len(series) < 2:
        return None
    uid, files = choose_series(folder, series_uid)
    how = "as asked with --series" if series_uid else "the one with the most slices, ties by smallest UID"
    others = ", ".join(f"{u} ({len(f)} slices)" for u, f in sorted(series.items()) if u != uid)
    return (f"{folder} holds {len(series)} DICOM series; used {uid} ({len(files)} slices, {how}); "
            f"others: {others}; choose one with --series UID")


def _tag(reader: sitk.ImageFileReader, tag: str, path: str, name: str) -> np.ndarray:
    if not reader.HasMetaDataKey(tag):
        raise ImageReadError(f"{Path(path).parent}: slice {Path(path).name} has no {name} ({tag.replace('|', ',')}); "
                             "vfnet cannot tell where it lies, so it refuses the series")
    try:
        return np.array([float(v) for v in reader.GetMetaData(tag).replace("\\", " ").split()])
    except ValueError:
        raise ImageReadError(f"{Path(path).parent}: slice {Path(path).name} has an unreadable {name}") from None


def check_slice_positions(folder: Path, files: list[str]) -> float | None:
    """The slice step in mm, after checking the slices are evenly spaced; None for a single slice.

    Raises:
        ImageReadError: a position or orientation tag is missing, orientations differ, or a step
            differs from the median step by more than 1 % (a missing, duplicated or irregular slice).
    """
    if len(files) < 2:
        return None
    positions, orientations = [], []
    reader = sitk.ImageFileReader()
    for path in files:
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise ImageReadError(f"{folder}: slice {Path(path).name} cannot be read (corrupt or not DICOM)") from None
        positions.append(_tag(reader, POSITION_TAG, path, "ImagePositionPatient"))
        orientations.append(_tag(reader, ORIENTATION_TAG, path, "ImageOrientationPatient"))
    if any(p.size != 3 for p in positions) or any(o.size != 6 for o in orientations):
        raise ImageReadError(f"{folder}: a slice's position or orientation tag does not hold 3 and 6 numbers")
    if not all(np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
        raise ImageReadError(f"{folder}: the slices have different orientations; export the series again")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    depth = np.sort(np.array([float(np.dot(normal, p)) for p in positions]))
    steps = np.diff(depth)
    median = float(np.median(steps))
    if median <= 1e-6:
        raise ImageReadError(f"{folder}: several slices share the same position; the series is duplicated or "
                             "mixes acquisitions")
    bad = np.flatnonzero(np.abs(steps - median) > STEP_RTOL * median + 1e-4)
    if bad.size:
        i = int(bad[0])
        kind = "missing slice(s)" if steps[i] > median else "irregular or duplicated slices"
        raise ImageReadError(
            f"{folder}: the slices are not evenly spaced ({kind}): {steps[i]:.3f} mm between the slices at "
            f"{depth[i]:.3f} and {depth[i + 1]:.3f} mm along the slice normal, where the others are {median:.3f} mm "
            f"apart ({bad.size} such gap(s) in {len(files)} slices); export the complete series")
    return median


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read the series a folder means (see :func:`choose_series`), after checking its slice positions."""
    folder = Path(folder)
    _, files = choose_series(folder, series_uid)
    step = check_slice_positions(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    with gdcm_scan(quiet=False):
        image = reader.Execute()
    if step is not None and image.GetDimension() == 3 and abs(image.GetSpacing()[2] - step) > STEP_RTOL * step:
        spacing = list(image.GetSpacing())
        image.SetSpacing(spacing[:2] + [step])  # the positions, not SliceThickness, say how far apart slices are
    return image
