"""The three data folders and dataset-name resolution (one place for both)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vfnet.errors import DatasetNotFoundError

ENV_VARS = ("vfnet_raw", "vfnet_preprocessed", "vfnet_results")
_DEFAULT_SUBDIRS = {"vfnet_raw": "raw", "vfnet_preprocessed": "preprocessed", "vfnet_results": "results"}
# MSD / nnU-Net v1 folders (TaskXX_Name) and nnU-Net v2 folders (DatasetXXX_Name) alike
# inside a preprocessed dataset: the arrays of every case, and the VFN fusion sets
ARRAYS_DIR = "arrays"
# a unit folder's checkpoints: resumed from, chosen on validation, and the one that marks it trained
LATEST_CHECKPOINT = "checkpoint_latest.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"
FINAL_CHECKPOINT = "checkpoint_final.pth"
FUSION_DIR = "fusion"
# inside a unit folder: held-out probability maps, the run's record and its results
PREDICTIONS_DIR = "predictions"
UNIT_RECORD = "unit.json"
SUMMARY = "summary.json"
# the networks' folder names; a 2D view's is view_network(view), extra VFN seeds add _seed<N>
VFN_NETWORK = "vfn"
VFN_NOIMAGE_NETWORK = "vfn_noimage"
UNET3D_NETWORK = "3d"
# fusion method name (command line, crossval) → the folder of the VFN networks behind it
VFN_METHOD_NETWORKS = {"vfn": VFN_NETWORK, "vfn-noimage": VFN_NOIMAGE_NETWORK}
_TASK_RE = re.compile(r"^(?:Task|Dataset)(\d{2,3})_(.+)$")
_notice_given = False
logger = logging.getLogger(__name__)


def default_data_root() -> Path:
    """Where the three folders go when their variables are unset: ``~/vfnet_data`` (``$HOME`` or the
    user's profile folder), whatever the current directory."""
    return Path.home() / "vfnet_data"


def _folder(var: str) -> Path:
    global _notice_given
    value = os.environ.get(var)
    if value:
        return Path(value)
    if not _notice_given:
        logger.warning("vfnet_raw / vfnet_preprocessed / vfnet_results are not set; using %s/{raw,preprocessed,"
                       "results} (set them to keep data elsewhere)", default_data_root())
        _notice_given = True
    return default_data_root() / _DEFAULT_SUBDIRS[var]


def raw_root() -> Path:
    """Folder of raw datasets (``$vfnet_raw`` or ``~/vfnet_data/raw``)."""
    return _folder("vfnet_raw")


def preprocessed_root() -> Path:
    """Folder of preprocessed datasets (``$vfnet_preprocessed`` or ``~/vfnet_data/preprocessed``)."""
    return _folder("vfnet_preprocessed")


def results_root() -> Path:
    """Folder of trained models (``$vfnet_results`` or ``~/vfnet_data/results``)."""
    return _folder("vfnet_results")


def task_name(task_id: int, name: str) -> str:
    """``task_name(4, "Hippocampus") == "Task04_Hippocampus"``."""
    return f"Task{task_id:02d}_{name}"


def parse_task_name(folder_name: str) -> tuple[int, str] | None:
    """Return (id, name) of a ``TaskXX_Name`` or ``DatasetXXX_Name`` folder name, or None."""
    match = _TASK_RE.match(folder_name)
    return (int(match.group(1)), match.group(2)) if match else None


def list_datasets(root: Path) -> list[str]:
    """Dataset folder names (``TaskXX_Name`` or ``DatasetXXX_Name``) directly under ``root``, sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and parse_task_name(p.name))


def resolve_dataset(dataset: str | int | None, root: Path) -> str:
    """Resolve ``4``, ``"Task04"``, ``"Task04_Hippocampus"``, ``"Dataset004"`` or ``"Dataset004_Hippocampus"``
    (nnU-Net v2's names) to the folder name under ``root``; either kind of folder matches an id.

    Args:
        dataset: id, ``TaskXX`` or full name; None picks the only dataset there is.
        root: the stage folder to look in (raw, preprocessed or results).

    Raises:
        DatasetNotFoundError: no match or several, with the datasets found.
    """
    found = list_datasets(root)
    listing = ", ".join(found) if found else "none"
    if dataset is None or str(dataset).strip() == "":
        if len(found) == 1:
            return found[0]
        raise DatasetNotFoundError(
            f"no dataset given (-d) and {len(found)} datasets in {root}: {listing}. "
            "Name one with -d, e.g. -d 4 or -d Task04."
        )
    text = str(dataset).strip()
    match = re.match(r"^(?:Task|Dataset)?(\d{1,3})(?:_(.+))?$", text)
    if match:
        wanted_id = int(match.group(1))
        wanted_name = match.group(2)
        hits = [
            f for f in found
            if parse_task_name(f)[0] == wanted_id
            and (wanted_name is None or parse_task_name(f)[1] == wanted_name)
        ]
    else:
        hits = [f for f in found if parse_task_name(f)[1].lower() == text.lower()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DatasetNotFoundError(f"dataset '{text}' not found in {root}; datasets there: {listing}")
    raise DatasetNotFoundError(f"dataset '{text}' is ambiguous in {root}: {', '.join(hits)}")


def raw_dataset(dataset: str | int | None) -> Path:
    return raw_root() / resolve_dataset(dataset, raw_root())


def preprocessed_dataset(dataset: str | int | None) -> Path:
    return preprocessed_root() / resolve_dataset(dataset, preprocessed_root())


def results_dataset(dataset: str | int | None) -> Path:
    return results_root() / resolve_dataset(dataset, results_root())


def view_network(view: str) -> str:
    """The network (and folder) name of a view's 2D U-Net: ``2d_axial``."""
    return f"2d_{view}"


@dataclass(frozen=True)
class UnitPaths:
    """The folder and files of one training unit, named in one place.

    A unit lives in ``<results>/<Task>/<preset>/<network>/<unit>`` (:meth:`of`); a run that
    replaces a finished unit trains in a staging folder (``UnitPaths(staging)``) with the same files.

    Example:
        >>> unit = UnitPaths.of(Path("results/Task04_Hippocampus"), "quick", view_network("axial"), "cca_0_1")
        >>> unit.prediction("hippocampus_001").name
        'hippocampus_001.npz'
    """

    folder: Path

    @classmethod
    def of(cls, dataset_folder: Path, preset: str, network: str, unit: str) -> UnitPaths:
        """``network`` is ``2d_<view>``, ``vfn``, ``vfn_noimage`` (``_seed<N>``) or ``3d``."""
        return cls(Path(dataset_folder) / preset / network / str(unit))

    @property
    def final_checkpoint(self) -> Path:
        return self.folder / FINAL_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.folder / BEST_CHECKPOINT

    @property
    def latest_checkpoint(self) -> Path:
        return self.folder / LATEST_CHECKPOINT

    @property
    def record(self) -> Path:
        """``unit.json``: the unit's folds, cases and schedule, written when it starts."""
        return self.folder / UNIT_RECORD

    @property
    def summary(self) -> Path:
        """``summary.json``: written last; with the final checkpoint it marks the unit trained."""
        return self.folder / SUMMARY

    @property
    def predictions(self) -> Path:
        return self.folder / PREDICTIONS_DIR

    def prediction(self, case: str) -> Path:
        """The held-out probability map of ``case``."""
        return self.predictions / f"{case}.npz"

    @property
    def finished(self) -> bool:
        """Trained to the end: its final checkpoint and its summary exist."""
        return self.final_checkpoint.is_file() and self.summary.is_file()


def unit_dir(dataset_folder: Path, preset: str, network: str, unit: str) -> Path:
    """Results folder of one training unit (:meth:`UnitPaths.of`)."""
    return UnitPaths.of(dataset_folder, preset, network, unit).folder


def fusion_set_dir(preprocessed: Path, preset: str, vfn_unit: str) -> Path:
    """Folder of the fusion set of VFN unit ``vfn_unit``: ``<preprocessed>/fusion/<preset>/<unit>``."""
    return Path(preprocessed) / FUSION_DIR / preset / vfn_unit


def copy_dataset_files(preprocessed: Path, results: Path) -> None:
    """Keep plans, dataset.json and fingerprint beside the models so results are self-contained."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json", "fingerprint.json", "splits.json"):
        source = preprocessed / name
        if source.is_file():
            shutil.copyfile(source, results / name)


def trained_presets(dataset_folder: Path, network_prefix: str = "") -> list[str]:
    """Presets under a results dataset folder holding at least one finished unit, sorted.

    Args:
        dataset_folder: ``<results>/<Task>``.
        network_prefix: count only units of networks whose folder starts with it (``2d``, ``3d``, ``vfn``).
    """
    if not Path(dataset_folder).is_dir():
        return []
    return sorted(p.name for p in Path(dataset_folder).iterdir()
                  if p.is_dir() and any(p.glob(f"{network_prefix}*/*/{FINAL_CHECKPOINT}")))


def trained_units(dataset_folder: Path, preset: str, network: str) -> list[str]:
    """Units of ``network`` (e.g. ``2d_axial``) trained to the end in ``preset``, sorted."""
    folder = Path(dataset_folder) / preset / network
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / FINAL_CHECKPOINT).is_file())


def resolve_preset(dataset_folder: Path, preset: str | None, network_prefix: str = "2d") -> str:
    """The preset a command should use: ``preset`` when given and trained (or begun: its folder
    exists, and the command names what is missing), else the only trained one.

    Args:
        dataset_folder: ``<results>/<Task>``.
        preset: the one asked for, or None.
        network_prefix: which networks count as trained (``2d`` for the views, ``3d`` for the baseline).

    Raises:
        PresetNotFoundError: nothing trained, several presets and none asked for, or the one asked
            for is not trained; ``presets`` lists those that are.
    """
    from vfnet.errors import PresetNotFoundError

    found = trained_presets(dataset_folder, network_prefix)
    name = Path(dataset_folder).name
    if preset is not None and (preset in found or (Path(dataset_folder) / preset).is_dir()):
        return preset
    if not found:
        wanted = preset or "quick"
        head = f"no results for preset '{preset}' in {dataset_folder}: " if preset else ""
        raise PresetNotFoundError(
            f"{head}nothing is trained for {name} yet (no finished {network_prefix} unit under {dataset_folder}); "
            f"train it with: vfnet_train_all -d {name} --preset {wanted}", [])
    if preset is None:
        if len(found) == 1:
            return found[0]
        raise PresetNotFoundError(f"{name} has several trained presets ({', '.join(found)}); choose one with "
                                  f"--preset", found)
    raise PresetNotFoundError(f"preset '{preset}' of {name} has no trained {network_prefix} unit; trained "
                              f"preset(s): {', '.join(found)}", found)
