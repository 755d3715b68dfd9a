"""Image IO and orientation: with :mod:`vfnet.dicom`, the only module that imports SimpleITK for reading and writing.

Every volume enters vfnet through :func:`read_canonical`, which reorients it to LPS so
that the array is (inferior→superior, anterior→posterior, right→left) = (z, y, x),
whatever order the file stored. :func:`write_like` undoes that on the way out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfnet.atomic import atomic_path
from vfnet.dicom import gdcm_scan, read_dicom_series
from vfnet.errors import ImageReadError, ImageWriteError

CANONICAL_ORIENTATION = "LPS"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Geometry:
    """Where a volume sits in the world, as stored in its file (before reorientation)."""

    size: list[int]
    spacing: list[float]
    origin: list[float]
    direction: list[float]
    orientation: str  # three-letter code of the stored axes, e.g. "RAS"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(**data)


def strip_suffix(name: str) -> str:
    """``"case_0000.nii.gz"`` → ``"case_0000"``."""
    for suffix in IMAGE_SUFFIXES + (".dcm",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    with gdcm_scan():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_image(path: str | Path, verify: bool = True, series: str | None = None) -> sitk.Image:
    """Read a file SimpleITK knows, or a DICOM series folder (see :mod:`vfnet.dicom` for its rules).

    ``verify`` also checks NIfTI raw data, which ITK does not (see :func:`nifti_raw_check`).
    ``series`` picks the DICOM series of a folder holding several.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if verify and path.is_file():
        nifti_raw_check(path)
    try:
        if path.is_dir():
            return read_dicom_series(path, series)
        return sitk.ReadImage(str(path))
    except ImageReadError:
        raise
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot be read (corrupt, truncated or not an image{itk_reason(exc, path)})") from None


def itk_reason(exc: RuntimeError, path: str | Path | None = None) -> str:
    """ITK's own words from an exception, without C++ source paths, addresses and the file name: ``"; ITK: ..."``."""
    import re

    lines = [line for line in str(exc).splitlines() if line.strip()]
    chosen = next((line for line in lines if "ERROR" in line), lines[-1] if lines else "")
    chosen = re.sub(r"\S*/\S+\.(?:cxx|h|hxx|cpp|txx):\d+:?", "", chosen)
    chosen = re.sub(r"^\s*(?:sitk|itk)::ERROR:\s*|\w+\(0x[0-9a-f]+\):\s*", "", chosen)
    if path is not None:
        chosen = chosen.replace(f'"{path}"', "").replace(str(path), "")
    chosen = " ".join(chosen.split()).strip(" :,")
    return f"; ITK: {chosen[:160]}" if len(chosen) > 3 and "Exception thrown" not in chosen else ""


SPACING_RTOL = 1e-3
POSITION_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-3


def geometry_differences(image: sitk.Image, reference: sitk.Image) -> list[str]:
    """Which of ``size``, ``spacing``, ``origin``, ``direction`` differ beyond the tolerances.

    Tolerances: 0.1 % of the spacing, 0.01 mm of origin, 0.001 of the direction cosines.
    """
    if image.GetSize() != reference.GetSize():
        return ["size"]
    checks = (("spacing", image.GetSpacing(), reference.GetSpacing(), SPACING_RTOL, 0),
              ("origin", image.GetOrigin(), reference.GetOrigin(), 0, POSITION_ATOL_MM),
              ("direction", image.GetDirection(), reference.GetDirection(), 0, DIRECTION_ATOL))
    return [name for name, a, b, rtol, atol in checks if not np.allclose(a, b, rtol=rtol, atol=atol)]


def geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(
        size=list(image.GetSize()),
        spacing=list(image.GetSpacing()),
        origin=list(image.GetOrigin()),
        direction=list(image.GetDirection()),
        orientation=sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()),
    )


def to_canonical(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient to LPS; return the (z, y, x) array and its (z, y, x) spacing."""
    oriented = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
    spacing = oriented.GetSpacing()
    return sitk.GetArrayFromImage(oriented), (spacing[2], spacing[1], spacing[0])


def read_canonical(path: str | Path, series: str | None = None
                   ) -> tuple[np.ndarray, tuple[float, float, float], Geometry]:
    """Read a 3D image, reorient it to LPS and return (array (z, y, x), spacing (z, y, x), geometry).

    ``series`` picks the DICOM series of a folder holding several.
    """
    image = read_image(path, series=series)
    if image.GetDimension() != 3:
        raise ImageReadError(f"{path}: expected a 3D image, found {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()}")
    array, spacing = to_canonical(image)
    return array, spacing, geometry_of(image)


def from_canonical(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Turn a (z, y, x) LPS array of the reoriented shape back into the file's own geometry."""
    reference = sitk.Image([int(s) for s in geometry.size], sitk.sitkUInt8)
    reference.SetSpacing(geometry.spacing)
    reference.SetOrigin(geometry.origin)
    reference.SetDirection(geometry.direction)
    oriented_ref = sitk.DICOMOrient(reference, CANONICAL_ORIENTATION)
    image = sitk.GetImageFromArray(array)
    if image.GetSize() != oriented_ref.GetSize():
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.size} reoriented")
    image.CopyInformation(oriented_ref)
    back = sitk.DICOMOrient(image, geometry.orientation)
    # permutations and flips are exact; copy the stored values to avoid any rounding
    back.SetOrigin(geometry.origin)
    back.SetDirection(geometry.direction)
    back.SetSpacing(geometry.spacing)
    return back


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write atomically: to a temporary name with the same extension, verified, then renamed.

    ITK does not report every failed write (a full disk or a file-size limit can leave an empty
    file), so the temporary file is read back (header, and for NIfTI the whole data stream) and
    must describe an image of the same size before it takes its final name.

    Raises:
        ImageWriteError: the file could not be written completely; nothing is left under ``path``.
    """
    path = Path(path)
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    with atomic_path(path, suffix=suffix) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError:
            raise ImageWriteError(f"could not write {path}: the image writer failed (is the disk full or "
                                  "the folder read-only?)") from None
        problem = written_image_problem(tmp, tuple(image.GetSize()))
        if problem:
            raise ImageWriteError(f"could not write {path}: {problem} (is the disk full or a file-size limit set?)")


def written_image_problem(path: str | Path, size: tuple[int, ...] | None = None) -> str | None:
    """Why the image file at ``path`` is not complete (empty, unreadable, truncated, other size), or None."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return "the file is empty"
        nifti_raw_check(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except (ImageReadError, RuntimeError, OSError):
        return "the file cannot be read back"
    if size is not None and tuple(reader.GetSize()) != tuple(size):
        return f"the file holds size {reader.GetSize()}, not {size}"
    return None


def write_like(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a canonical (z, y, x) array in the file geometry it came from."""
    write_image(from_canonical(array, geometry), path)


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def nifti_raw_check(path: str | Path) -> int:
    """Check a NIfTI-1 file's raw data; return its count of NaN/Inf voxels.

    ITK's NIfTI reader accepts truncated ``.nii.gz`` files without complaint and silently
    turns NaN and Inf into 0, so neither problem shows in the array SimpleITK returns.
    Other formats return 0.

    Raises:
        ImageReadError: the data is truncated or the compressed stream is corrupt.
    """
    import gzip
    import zlib

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise ImageReadError(f"{path}: corrupt or truncated file ({exc}); re-export or re-download it") from None
    if len(raw) < 348:
        raise ImageReadError(f"{path}: file too short to be NIfTI ({len(raw)} bytes)")
    order = "<" if np.frombuffer(raw[:4], "<i4")[0] == 348 else ">"
    if np.frombuffer(raw[:4], order + "i4")[0] != 348:
        return 0  # NIfTI-2 or unknown: leave it to ITK
    dims = np.frombuffer(raw[40:56], order + "i2")
    datatype = int(np.frombuffer(raw[70:72], order + "i2")[0])
    bitpix = int(np.frombuffer(raw[72:74], order + "i2")[0])
    offset = int(np.frombuffer(raw[108:112], order + "f4")[0])
    voxels = int(np.prod([max(int(d), 1) for d in dims[1: 1 + int(np.clip(dims[0], 1, 7))]]))
    expected = voxels * bitpix // 8
    if len(raw) - offset < expected:
        raise ImageReadError(f"{path}: truncated, holds {len(raw) - offset} of {expected} data bytes; "
                             "re-export or re-download it")
    if datatype not in _NIFTI_FLOAT_TYPES:
        return 0
    data = np.frombuffer(raw, order + _NIFTI_FLOAT_TYPES[datatype], count=voxels, offset=offset)
    return int(data.size - np.count_nonzero(np.isfinite(data)))
