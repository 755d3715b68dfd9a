"""vfnet_apply_postprocessing as a library call: the post-processing crossval chose, on a folder of labels.

``vfnet_crossval`` decides per label whether keeping only its largest connected component
raises that label's Dice on the held-out cases and records it in
``$vfnet_results/<Task>/<preset>/crossval/best_method.json`` (``postprocess_labels``);
``vfnet_predict`` applies it by default. This applies it to label files that exist already
(e.g. predicted with ``--no-postprocess``, or ensembled with ``vfnet_ensemble``).

Example:
    >>> cleaned = apply_postprocessing_to_folder("pred_raw", "pred_pp", dataset=4, preset="quick")
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.fusion.postprocess import keep_largest_component
from vfnet.imageio import IMAGE_SUFFIXES, read_image, strip_suffix, write_image


def recorded_label_values(dataset: str | int | None, preset: str | None = None) -> tuple[list[int], dict[str, int]]:
    """(label values to clean, every label name → value) as vfnet_crossval recorded them for ``dataset``.

    Raises:
        ModelNotFoundError: crossval has not run for that preset.
    """
    results = paths.results_dataset(dataset)
    preset = paths.resolve_preset(results, preset)
    record_path = results / preset / "crossval" / "best_method.json"
    if not record_path.is_file():
        raise ModelNotFoundError(f"{record_path} not found: choose the post-processing first with: "
                                 f"vfnet_crossval -d {results.name} --preset {preset}")
    record = read_json(record_path)
    labels = {name: int(value) for name, value in Plan.load(results)["labels"].items() if int(value) != 0}
    names = record.get("postprocess_labels", list(labels) if record.get("postprocess") else [])
    return [labels[name] for name in names if name in labels], labels


def apply_postprocessing_to_folder(source: str | Path, target: str | Path, dataset: str | int | None = None,
                                   preset: str | None = None, quiet: bool = False) -> tuple[list[str], list[int]]:
    """Keep the largest component of the labels crossval chose, in every label file of ``source``.

    Files are written under the same names into ``target`` with their geometry unchanged
    (files whose labels need nothing are copied as they are).

    Returns:
        (the files written, the label values cleaned).
    """
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise VfnetError(f"input folder {source} does not exist")
    if target.resolve() == source.resolve():
        raise VfnetError(f"output folder {target} is the input folder; choose another -o")
    values, _ = recorded_label_values(dataset, preset)
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise VfnetError(f"{source} holds no label files ({', '.join(IMAGE_SUFFIXES)})")
    target.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="post-processing", unit="case", disable=True if quiet else None):
        image = read_image(path)
        array = sitk.GetArrayFromImage(image)
        cleaned = keep_largest_component(array, 0, classes=values) if values else array
        out = sitk.GetImageFromArray(cleaned)
        out.CopyInformation(image)
        write_image(out, target / path.name)
    return [strip_suffix(p.name) for p in files], values
