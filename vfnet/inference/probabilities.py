"""Fused class probabilities in the input's own voxel grid, saved the way nnU-Net saves them.

``vfnet_predict --save-probabilities`` writes, beside ``<case>.nii.gz``:

- ``<case>.npz`` with ``probabilities``: float16 (num_classes, z, y, x), the input's voxel grid
  in SimpleITK's array order (what ``sitk.GetArrayFromImage`` gives for the input file), class
  ``c`` being the c-th label value in ascending order;
- ``<case>.json``, the properties to read them (nnU-Net's ``<case>.pkl``): ``spacing``,
  ``origin`` and ``direction`` as SimpleITK gives them (x, y, z), ``shape`` (z, y, x), ``labels``
  (name → value) and ``class_values`` (class index → label value).

Such files from several models are what ``vfnet_ensemble`` averages.

Example:
    >>> probabilities, properties = load_probabilities("out/case_01.npz")
    >>> image = labels_image(np.argmax(probabilities, axis=0), properties)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfnet.atomic import atomic_path, write_json
from vfnet.errors import VfnetError
from vfnet.imageio import Geometry, from_canonical
from vfnet.preprocessing.preprocessing import class_values, resample_to_shape

PROBABILITIES_KEY = "probabilities"


def probabilities_in_input_grid(probabilities: np.ndarray, canonical_shape: tuple[int, ...],
                                geometry: Geometry, coarse: int | None = None) -> np.ndarray:
    """(K, z, y, x) probabilities of the preprocessed grid → float32 (K, z, y, x) in the input file's array order.

    Resampled linearly to the reoriented input's shape (a convex combination: every voxel still
    sums to 1; the nearest slice along a ``coarse`` axis), then each class map is turned back
    into the file's own axis order.
    """
    probabilities = resample_to_shape(np.asarray(probabilities, dtype=np.float32), tuple(canonical_shape), order=1,
                                      coarse=coarse)
    return np.stack([sitk.GetArrayFromImage(from_canonical(np.ascontiguousarray(channel), geometry))
                     for channel in probabilities]).astype(np.float32)


def probability_properties(geometry: Geometry, labels: dict[str, int]) -> dict:
    """The properties that place saved probabilities in the world and name their classes."""
    return {"spacing": [float(s) for s in geometry.spacing], "origin": [float(o) for o in geometry.origin],
            "direction": [float(d) for d in geometry.direction], "shape": [int(s) for s in geometry.size[::-1]],
            "labels": {name: int(value) for name, value in labels.items()},
            "class_values": [int(v) for v in class_values(labels)],
            "axes": "probabilities are (class, z, y, x): SimpleITK's array order of the input file"}


def save_probabilities(out_dir: Path, case_id: str, probabilities: np.ndarray, properties: dict) -> Path:
    """Write ``<case>.npz`` (float16 ``probabilities``) and ``<case>.json`` (properties) atomically."""
    shape = [int(s) for s in properties["shape"]]
    if list(probabilities.shape[1:]) != shape or probabilities.shape[0] != len(properties["class_values"]):
        raise VfnetError(f"{case_id}: probabilities {probabilities.shape} do not match {len(properties['class_values'])}"
                         f" classes of shape {shape}")
    path = Path(out_dir) / f"{case_id}.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **{PROBABILITIES_KEY: probabilities.astype(np.float16)})
    write_json(Path(out_dir) / f"{case_id}.json", properties)
    return path


def load_probabilities(npz_path: str | Path) -> tuple[np.ndarray, dict]:
    """(float32 probabilities (K, z, y, x), properties) of a ``<case>.npz`` and the ``<case>.json`` beside it.

    Raises:
        VfnetError: the properties file is missing, or the array does not match it.
    """
    npz_path = Path(npz_path)
    json_path = npz_path.with_suffix(".json")
    if not json_path.is_file():
        raise VfnetError(f"{json_path} not found: {npz_path.name} needs its properties (written by "
                         "vfnet_predict --save-probabilities)")
    properties = json.loads(json_path.read_text())
    try:
        with np.load(npz_path) as archive:
            probabilities = archive[PROBABILITIES_KEY].astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise VfnetError(f"{npz_path}: not a vfnet probabilities file ({type(exc).__name__}: {exc})") from None
    if list(probabilities.shape[1:]) != list(properties["shape"]):
        raise VfnetError(f"{npz_path}: probabilities of shape {probabilities.shape[1:]}, properties say "
                         f"{properties['shape']}")
    return probabilities, properties


def labels_image(classes: np.ndarray, properties: dict) -> sitk.Image:
    """A label image of class indices (z, y, x) in the input's array order, with the label values and geometry."""
    values = np.asarray(properties["class_values"])
    labels = values[np.asarray(classes)]
    image = sitk.GetImageFromArray(labels.astype(np.uint8 if values.max() < 256 else np.uint16))
    image.SetSpacing(properties["spacing"])
    image.SetOrigin(properties["origin"])
    image.SetDirection(properties["direction"])
    return image
