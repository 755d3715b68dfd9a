"""A small synthetic dataset in the raw layout: organ-like shapes in noisy single-channel volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfnet.atomic import write_json
from vfnet.dataset import DatasetInfo
from vfnet.imageio import write_image

DEMO_TASK = "Task099_DemoOrgans"
DEMO_LABELS = {"background": 0, "organ": 1, "lesion": 2}


def synthetic_case(rng: np.random.Generator, shape=(24, 40, 36)) -> tuple[np.ndarray, np.ndarray]:
    """One (z, y, x) image and label: a large ellipsoid organ holding a small brighter lesion."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-3, 3, 3)
    radii = np.array(shape, dtype=np.float32) * rng.uniform(0.22, 0.32, 3)
    organ = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    lesion_centre = centre + rng.uniform(-0.4, 0.4, 3) * radii
    lesion_radii = radii * rng.uniform(0.25, 0.4)
    lesion = ((((grid - lesion_centre[:, None, None, None]) / lesion_radii[:, None, None, None]) ** 2).sum(0) <= 1)
    lesion &= organ
    label = organ.astype(np.uint8)
    label[lesion] = 2
    bias = np.linspace(-15, 15, shape[2], dtype=np.float32)[None, None, :]
    image = 100 + bias + 60 * organ + 50 * lesion + rng.normal(0, 18, shape).astype(np.float32)
    return image.astype(np.float32), label


def _to_image(array: np.ndarray, spacing, origin) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def make_demo_dataset(raw_root: Path, num_train: int = 16, num_test: int = 4, seed: int = 0,
                      shape=(24, 40, 36), task: str = DEMO_TASK) -> Path:
    """Write ``raw_root/<task>`` with imagesTr, labelsTr, imagesTs, labelsTs and dataset.json.

    Volumes are stored with 2 mm slices and 1 mm in-plane pixels so resampling and
    reorientation are exercised; the test set has labels for later evaluation.
    """
    rng = np.random.default_rng(seed)
    target = Path(raw_root) / task
    spacing, origin = (1.0, 1.0, 2.0), (-20.0, 10.0, 5.0)
    for index in range(num_train + num_test):
        image, label = synthetic_case(rng, shape)
        split = "Tr" if index < num_train else "Ts"
        case = f"demo_{index:03d}"
        write_image(_to_image(image, spacing, origin), target / f"images{split}" / f"{case}_0000.nii.gz")
        write_image(_to_image(label, spacing, origin), target / f"labels{split}" / f"{case}.nii.gz")
    info = DatasetInfo(name=task.split("_", 1)[1], channel_names={0: "MRI"}, labels=dict(DEMO_LABELS),
                       num_training=num_train)
    write_json(target / "dataset.json", info.to_json())
    return target
