"""Preprocessing: reorient to LPS, resample to the target spacing, normalize, store as .npy.

Arrays are saved as plain ``.npy`` so every later stage can memory-map them and slice any
view cheaply. Each case is written under a temporary name, then renamed; its properties
JSON (written last) carries the plan hash and the size and modification time of every raw
file it was made from, so a rerun skips finished cases and redoes those whose plan or raw
files changed.
"""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from vfnet.atomic import atomic_path, read_json, remove_stale_temporaries, write_json
from vfnet.dataset import CaseFiles
from vfnet.errors import VfnetError
from vfnet.experiment_planning.plans import ANISOTROPY_THRESHOLD
from vfnet.experiment_planning.schema import RESAMPLING_SCHEMES
from vfnet.imageio import read_canonical
from vfnet.paths import ARRAYS_DIR

# plans made before the resampling key resampled every axis jointly
JOINT_RESAMPLING = {"scheme": "joint", "anisotropy_threshold": ANISOTROPY_THRESHOLD}


def check_resampling(resampling: dict) -> dict:
    """``resampling`` when its scheme is known; else a VfnetError naming the schemes."""
    if resampling.get("scheme") not in RESAMPLING_SCHEMES:
        raise VfnetError(f"plans.json: resampling scheme '{resampling.get('scheme')}' is unknown; expected "
                         f"{' or '.join(RESAMPLING_SCHEMES)}")
    return resampling


def coarse_axis(spacing, target, resampling: dict | None) -> int | None:
    """The axis resampled on its own, with nearest neighbour, when going from ``spacing`` to ``target``.

    Scheme ``separate_coarse_axis`` (nnU-Net's): if ``spacing`` is anisotropic (coarsest more than
    ``anisotropy_threshold`` times the finest) its coarsest axis, else if ``target`` is, the
    target's; None when neither is, when two axes tie for coarsest, or with scheme ``joint``.
    Interpolating across thick slices mixes anatomy that is centimetres apart; copying the nearest
    slice does not.
    """
    if resampling is None or check_resampling(resampling)["scheme"] == "joint":
        return None
    for grid in (np.asarray(spacing, float), np.asarray(target, float)):
        if grid.max() / grid.min() > float(resampling["anisotropy_threshold"]):
            coarsest = np.flatnonzero(np.isclose(grid, grid.max(), rtol=1e-3))
            return int(coarsest[0]) if len(coarsest) == 1 else None
    return None


def resample(volume: np.ndarray, spacing, target, order: int, resampling: dict | None = None) -> np.ndarray:
    """Resample a (z, y, x) volume from ``spacing`` to ``target``; nothing happens within 1%.

    ``resampling`` is the plan's section (:func:`coarse_axis`); None resamples all axes jointly.
    """
    factors = np.asarray(spacing, float) / np.asarray(target, float)
    if np.allclose(factors, 1.0, rtol=0.01):
        return volume
    shape = np.maximum(np.round(np.array(volume.shape) * factors).astype(int), 1)
    return resample_to_shape(volume, tuple(shape), order, coarse_axis(spacing, target, resampling))


def resample_to_shape(volume: np.ndarray, shape: tuple[int, ...], order: int, coarse: int | None = None) -> np.ndarray:
    """Resample the last three axes of ``volume`` to ``shape`` (order 0 for labels).

    With ``coarse`` (an axis of the three) the other two axes are interpolated with ``order``
    slice by slice, and the coarse axis with nearest neighbour, as nnU-Net does for anisotropic data.
    """
    if tuple(volume.shape[-3:]) == tuple(shape):
        return volume
    zoom = [t / s for t, s in zip(shape, volume.shape[-3:])]
    if coarse is None:
        out = _zoom(volume, zoom, order)
    else:
        in_plane = [1.0 if axis == coarse else z for axis, z in enumerate(zoom)]
        along = [z if axis == coarse else 1.0 for axis, z in enumerate(zoom)]
        # a tensor-product spline sampled at whole positions of one axis is each slice's 2D spline
        out = _zoom(_zoom(volume, in_plane, order), along, 0)
    return out[..., : shape[0], : shape[1], : shape[2]]


def _zoom(volume: np.ndarray, zoom: list[float], order: int) -> np.ndarray:
    if all(z == 1.0 for z in zoom):
        return volume
    factors = [1.0] * (volume.ndim - 3) + list(zoom)
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)


def normalize(image: np.ndarray, scheme: dict) -> np.ndarray:
    """Normalize one channel as the plan says (``ct`` clip + global z-score, or per-image ``zscore``)."""
    image = image.astype(np.float32, copy=False)
    if scheme["scheme"] == "ct":
        low, high = scheme["clip"]
        return ((np.clip(image, low, high) - scheme["mean"]) / scheme["std"]).astype(np.float32)
    std = float(image.std())
    return ((image - float(image.mean())) / max(std, 1e-8)).astype(np.float32)


def plan_resampling(plan) -> dict:
    """The plan's resampling section; plans written before it existed resample jointly, as they did."""
    data = plan.data if hasattr(plan, "data") else plan
    return check_resampling(data.get("resampling", JOINT_RESAMPLING))


def preprocess_image(channels: list[np.ndarray], spacing, plan: dict) -> np.ndarray:
    """Canonical channel arrays → resampled, normalized (C, z, y, x) float32."""
    out = []
    for index, array in enumerate(channels):
        array = resample(array.astype(np.float32), spacing, plan["target_spacing"], order=3,
                         resampling=plan_resampling(plan))
        out.append(normalize(array, plan["normalization"][str(index)]))
    return np.stack(out)


def label_to_classes(label: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """Map declared label values to class indices 0..C-1 in ascending value order."""
    values = sorted(labels.values())
    lookup = np.zeros(int(max(values)) + 1, dtype=np.uint8)
    for index, value in enumerate(values):
        lookup[value] = index
    return lookup[label.astype(np.int64)]


def class_values(labels: dict[str, int]) -> np.ndarray:
    """Inverse of :func:`label_to_classes`: class index → label value."""
    return np.array(sorted(labels.values()), dtype=np.int32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Save under a temporary name, read the header and size back, then rename (a full disk raises VfnetError)."""
    with atomic_path(path, suffix=".npy") as tmp:
        try:
            np.save(tmp, array)
            stored = np.load(tmp, mmap_mode="r")  # memory-mapping checks the file holds every byte
            complete = stored.shape == array.shape and stored.dtype == array.dtype
            del stored
        except (OSError, ValueError) as exc:  # numpy reports a short write without an errno
            raise VfnetError(f"could not write {path} completely ({exc}); is the disk full or a file-size limit "
                             "set? Free some space and rerun") from None
        if not complete:
            raise VfnetError(f"could not write {path} completely; free some space and rerun")


def source_stamps(case: CaseFiles) -> dict[str, dict[str, int]]:
    """Size and modification time (ns) of each raw file of a case, keyed ``imagesTr/<name>``."""
    stamps = {}
    for path in [*case.images, *([case.label] if case.label else [])]:
        info = Path(path).stat()
        stamps[f"{Path(path).parent.name}/{Path(path).name}"] = {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}
    return stamps


def case_is_current(folder: Path, case_id: str, plan_hash: str, sources: dict | None = None) -> bool:
    """Whether a case's arrays were made with ``plan_hash`` (and, when given, from these raw ``sources``)."""
    props = folder / ARRAYS_DIR / f"{case_id}.json"
    if not props.is_file():
        return False
    try:
        recorded = read_json(props)
    except ValueError:
        return False
    done = recorded.get("plan_hash") == plan_hash and (sources is None or recorded.get("sources") == sources)
    arrays = [folder / ARRAYS_DIR / f"{case_id}_{k}.npy" for k in ("image", "label")]
    return done and all(a.is_file() and a.stat().st_size > 0 for a in arrays)


def preprocess_case(case: CaseFiles, plan: dict, plan_hash: str, folder: Path) -> str:
    # stamped before reading: a file that changes while it is read is redone by the next run
    sources = source_stamps(case)
    channels, spacing, geometry = [], None, None
    for path in case.images:
        array, spacing, geometry = read_canonical(path)
        channels.append(array)
    label, _, _ = read_canonical(case.label)
    image = preprocess_image(channels, spacing, plan)
    classes = label_to_classes(resample(label, spacing, plan["target_spacing"], order=0), plan["labels"])
    if classes.shape != image.shape[1:]:
        classes = resample_to_shape(classes, image.shape[1:], order=0)
    arrays = Path(folder) / ARRAYS_DIR
    _save_npy(arrays / f"{case.case_id}_image.npy", image)
    _save_npy(arrays / f"{case.case_id}_label.npy", classes.astype(np.uint8))
    write_json(arrays / f"{case.case_id}.json", {
        "case_id": case.case_id,
        "plan_hash": plan_hash,
        "sources": sources,
        "geometry": geometry.to_dict(),
        "canonical_shape": [int(s) for s in channels[0].shape],
        "canonical_spacing": [float(s) for s in spacing],
        "preprocessed_shape": [int(s) for s in image.shape[1:]],
    })
    return case.case_id


def _preprocess_args(args):
    return preprocess_case(*args)


def preprocess_dataset(cases: list[CaseFiles], plan: dict, plan_hash: str, folder: Path,
                       num_processes: int = 2, quiet: bool = False) -> tuple[int, int]:
    """Preprocess every case not already current (same plan hash, same raw files). Returns (done now, skipped)."""
    remove_stale_temporaries(Path(folder) / ARRAYS_DIR)  # left by a killed run
    todo = [c for c in cases if not case_is_current(folder, c.case_id, plan_hash, source_stamps(c))]
    jobs = [(case, plan, plan_hash, folder) for case in todo]
    bar = {"total": len(jobs), "desc": "preprocessing", "unit": "case", "disable": True if quiet or not jobs else None}
    if num_processes <= 1 or len(jobs) < 4:
        for job in tqdm(jobs, **bar):
            preprocess_case(*job)
    else:
        with get_context().Pool(num_processes) as pool:
            for _ in tqdm(pool.imap_unordered(_preprocess_args, jobs, chunksize=4), **bar):
                pass
    return len(todo), len(cases) - len(todo)
