"""vfnet_ensemble as a library call: average saved probabilities of several predictions, write labels.

Every input folder holds ``<case>.npz`` and ``<case>.json`` as ``vfnet_predict --save-probabilities``
writes them (:mod:`vfnet.inference.probabilities`). A case must be in every folder, on the same
voxel grid and with the same labels; its probabilities are averaged with equal weights and the
argmax is written as ``<case>.nii.gz`` in that grid.

Example:
    >>> written = ensemble_folders(["pred_vfnet", "pred_3d"], "pred_ensemble", save_probabilities=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vfnet.errors import VfnetError
from vfnet.imageio import write_image
from vfnet.inference.probabilities import labels_image, load_probabilities, save_probabilities

_GEOMETRY_ATOL = 1e-4


def _matching(first: dict, other: dict, case: str, folder: Path) -> None:
    if other["class_values"] != first["class_values"] or other["labels"] != first["labels"]:
        raise VfnetError(f"{folder / case}.json has labels {other['labels']}, the first folder {first['labels']}: "
                         "only predictions of the same labels can be ensembled")
    if other["shape"] != first["shape"] or not all(
            np.allclose(other[k], first[k], atol=_GEOMETRY_ATOL) for k in ("spacing", "origin", "direction")):
        raise VfnetError(f"{folder / case}.json: the voxel grid (shape {other['shape']}, spacing {other['spacing']}) "
                         f"differs from the first folder's (shape {first['shape']}, spacing {first['spacing']})")


def ensemble_case(case: str, sources: Sequence[Path], target: Path, save: bool = False) -> None:
    """Average ``<case>.npz`` of every source folder and write ``target/<case>.nii.gz`` (and its .npz/.json)."""
    total, properties = None, None
    for folder in sources:
        probabilities, props = load_probabilities(Path(folder) / f"{case}.npz")
        if properties is None:
            total, properties = probabilities, props
        else:
            _matching(properties, props, case, Path(folder))
            total += probabilities
    mean = total / len(sources)
    write_image(labels_image(np.argmax(mean, axis=0), properties), target / f"{case}.nii.gz")
    if save:
        save_probabilities(target, case, mean, properties)


def ensemble_folders(sources: Sequence[str | Path], target: str | Path, save_probabilities: bool = False,
                     num_processes: int = 2, quiet: bool = False) -> list[str]:
    """Ensemble every case found in all ``sources`` into ``target``.

    Args:
        sources: two or more folders written with ``vfnet_predict --save-probabilities``.
        target: output folder (created); never one of the sources.
        save_probabilities: also write the averaged ``<case>.npz`` and ``<case>.json``.
        num_processes: cases handled at once (threads).
        quiet: no progress bar.

    Returns:
        The cases written.

    Raises:
        VfnetError: fewer than two folders, a folder without probabilities, a case missing in
            some folder (all are named), or predictions of other labels or grids.
    """
    sources, target = [Path(s) for s in sources], Path(target)
    if len(sources) < 2:
        raise VfnetError(f"ensembling needs at least two prediction folders, got {len(sources)}")
    cases_per_folder = []
    for folder in sources:
        if not folder.is_dir():
            raise VfnetError(f"prediction folder {folder} does not exist")
        cases = {p.name[:-4] for p in folder.glob("*.npz")}
        if not cases:
            raise VfnetError(f"{folder} holds no <case>.npz: predict with vfnet_predict --save-probabilities")
        if target.resolve() == folder.resolve():
            raise VfnetError(f"output folder {target} is one of the inputs; choose another -o")
        cases_per_folder.append(cases)
    every = set.union(*cases_per_folder)
    missing = {str(f): sorted(every - c) for f, c in zip(sources, cases_per_folder) if every - c}
    if missing:
        listing = "; ".join(f"{folder} lacks {', '.join(cases)}" for folder, cases in missing.items())
        raise VfnetError(f"every case must be predicted in every folder: {listing}")
    target.mkdir(parents=True, exist_ok=True)
    cases = sorted(every)
    with ThreadPoolExecutor(max(1, num_processes)) as pool:
        futures = [pool.submit(ensemble_case, case, sources, target, save_probabilities) for case in cases]
        for future in tqdm(futures, desc="ensembling", unit="case", disable=True if quiet else None):
            future.result()
    return cases
