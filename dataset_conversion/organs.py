"""Build a task from multi-label maps by choosing organs by name (a new organ needs no code)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from vfnet import paths
from vfnet.atomic import atomic_path, write_json
from vfnet.dataset import DatasetInfo
from vfnet.errors import VfnetError
from vfnet.imageio import IMAGE_SUFFIXES, read_image, strip_suffix, write_image

FILE_ENDING = ".nii.gz"


def _image_files(folder: Path) -> dict[str, Path]:
    """Case id → file; a trailing ``_0000`` is dropped so images and maps pair up."""
    if folder.is_file():
        return {re.sub(r"_0000$", "", strip_suffix(folder.name)): folder}
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name.lower().endswith(IMAGE_SUFFIXES):
            out[re.sub(r"_0000$", "", strip_suffix(path.name))] = path
    return out


def parse_organs(organs: list[str], names: dict[str, int]) -> list[tuple[str, list[int]]]:
    """``["pancreas", "adrenal_gland_left+adrenal_gland_right"]`` → [(name, [values]), ...]."""
    out = []
    for spec in organs:
        parts = [p.strip() for p in spec.split("+") if p.strip()]
        missing = [p for p in parts if p not in names]
        if missing:
            close = [n for n in names if any(m.split("_")[0] in n for m in missing)][:8]
            raise VfnetError(f"organ(s) {missing} not in the labels JSON"
                             + (f"; similar names: {', '.join(close)}" if close else ""))
        out.append(("+".join(parts) if len(parts) > 1 else parts[0], [names[p] for p in parts]))
    return out


def extract_organs(images: Path, label_maps: Path, labels_json: Path, organs: list[str], task: str,
                   quiet: bool = False) -> Path:
    """Write ``$vfnet_raw/<task>`` whose labels are the chosen organs (1, 2, ... in the order given).

    Args:
        images: a folder of images or one image file.
        label_maps: a folder of multi-label maps (same case names) or one file.
        labels_json: JSON mapping label value → organ name (or name → value).
        organs: organ names; ``a+b`` merges several into one label.
        task: ``TaskXX_Name`` of the new dataset.
    """
    if not paths.parse_task_name(task):
        raise VfnetError(f"task name '{task}' must look like Task05_Pancreas")
    try:
        mapping = json.loads(Path(labels_json).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VfnetError(f"{labels_json}: cannot read label names: {exc}") from None
    names = {}
    for key, value in mapping.items():
        if str(key).isdigit():
            names[str(value)] = int(key)
        else:
            names[str(key)] = int(value)
    chosen = parse_organs(organs, names)
    image_files, map_files = _image_files(Path(images)), _image_files(Path(label_maps))
    if Path(images).is_file() and Path(label_maps).is_file():
        map_files = {next(iter(image_files)): Path(label_maps)}
    cases = sorted(set(image_files) & set(map_files))
    if not cases:
        raise VfnetError(f"no case has both an image in {images} and a label map in {label_maps}")
    target = paths.raw_root() / task
    for case_id in tqdm(cases, desc="extracting organs", unit="case", disable=True if quiet else None):
        label_map = read_image(map_files[case_id])
        array = sitk.GetArrayFromImage(label_map)
        out = np.zeros(array.shape, dtype=np.uint8)
        for index, (_, values) in enumerate(chosen, start=1):
            out[np.isin(array, values)] = index
        label = sitk.GetImageFromArray(out)
        label.CopyInformation(label_map)
        write_image(label, target / "labelsTr" / f"{case_id}{FILE_ENDING}")
        source = image_files[case_id]
        destination = target / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
        if source.name.endswith(FILE_ENDING):
            with atomic_path(destination, suffix=FILE_ENDING) as tmp:
                shutil.copyfile(source, tmp)
        else:
            write_image(read_image(source), destination)
    modality = "CT"
    info = DatasetInfo(name=paths.parse_task_name(task)[1], channel_names={0: modality},
                       labels={"background": 0, **{name: i for i, (name, _) in enumerate(chosen, start=1)}},
                       file_ending=FILE_ENDING, num_training=len(cases))
    write_json(target / "dataset.json", info.to_json())
    return target
