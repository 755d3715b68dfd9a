"""Medical Segmentation Decathlon task folder → vfnet raw layout (nnU-Net v2 conventions)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from vfnet import paths
from vfnet.atomic import atomic_path, write_json
from vfnet.dataset import parse_dataset_json, read_dataset_json
from vfnet.errors import VfnetError
from vfnet.imageio import read_image, write_image

FILE_ENDING = ".nii.gz"


def _case_id(path: str) -> str:
    name = Path(path).name
    return name[: -len(FILE_ENDING)] if name.endswith(FILE_ENDING) else Path(name).stem


def _write_channels(source: Path, target_dir: Path, case_id: str, num_channels: int) -> None:
    """Copy a 3D image as channel 0000, or split a 4D image into one file per channel."""
    if num_channels == 1:
        with atomic_path(target_dir / f"{case_id}_0000{FILE_ENDING}", suffix=FILE_ENDING) as tmp:
            shutil.copyfile(source, tmp)
        return
    image = read_image(source)
    if image.GetDimension() != 4 or image.GetSize()[3] != num_channels:
        raise VfnetError(f"{source}: expected a 4D image with {num_channels} channels, "
                         f"found size {image.GetSize()}")
    size = list(image.GetSize())
    for channel in range(num_channels):
        volume = sitk.Extract(image, size[:3] + [0], [0, 0, 0, channel])
        write_image(volume, target_dir / f"{case_id}_{channel:04d}{FILE_ENDING}")


def _next_free_id(taken: list[str]) -> int:
    used = {paths.parse_task_name(n)[0] for n in taken}
    return next(i for i in range(1, 1000) if i not in used)


def convert_msd(source: Path, task_id: int | None = None, quiet: bool = False) -> Path:
    """Convert an MSD task folder (``TaskXX_Name`` with imagesTr, labelsTr, dataset.json).

    Args:
        source: the MSD task folder.
        task_id: id of the new dataset; default: the number in the folder name.

    Returns:
        The new ``$vfnet_raw/TaskXX_Name`` folder.
    """
    source = Path(source)
    json_path = source / "dataset.json"
    msd = read_dataset_json(json_path, f"is {source} an MSD task folder?")
    info = parse_dataset_json(msd, str(json_path))
    match = re.match(r"^Task(\d+)_(.+)$", source.name)
    name = match.group(2) if match else (info.name or source.name).replace(" ", "")
    if task_id is None:
        task_id = int(match.group(1)) if match else _next_free_id(paths.list_datasets(paths.raw_root()))
    target = paths.raw_root() / paths.task_name(task_id, name)
    training = msd.get("training") or [
        {"image": f"./imagesTr/{p.name}", "label": f"./labelsTr/{p.name}"}
        for p in sorted((source / "imagesTr").glob(f"*{FILE_ENDING}")) if not p.name.startswith(".")
    ]
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for entry in tqdm(training, desc="converting", unit="case", disable=True if quiet else None):
        image, label = source / entry["image"], source / entry["label"]
        for path in (image, label):
            if not path.is_file():
                raise VfnetError(f"{path}: listed in {json_path} but missing")
        case_id = _case_id(entry["image"])
        _write_channels(image, target / "imagesTr", case_id, info.num_channels)
        with atomic_path(target / "labelsTr" / f"{case_id}{FILE_ENDING}", suffix=FILE_ENDING) as tmp:
            shutil.copyfile(label, tmp)
    tests = sorted(p for p in (source / "imagesTs").glob(f"*{FILE_ENDING}") if not p.name.startswith(".")) \
        if (source / "imagesTs").is_dir() else []
    if tests:
        (target / "imagesTs").mkdir(exist_ok=True)
        for path in tqdm(tests, desc="converting test images", unit="case", disable=True if quiet else None):
            _write_channels(path, target / "imagesTs", _case_id(path.name), info.num_channels)
    info.name = name
    info.num_training = len(training)
    info.file_ending = FILE_ENDING
    write_json(target / "dataset.json", info.to_json())
    return target
