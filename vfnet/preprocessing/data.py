"""Read access to a preprocessed dataset: arrays, properties, splits and fold membership."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vfnet.atomic import read_json
from vfnet.errors import PlanError, VfnetError
from vfnet.paths import ARRAYS_DIR


class PreprocessedDataset:
    """Cases of ``$vfnet_preprocessed/TaskXX_Name``.

    Example:
        >>> data = PreprocessedDataset(folder)
        >>> image, label = data.load(data.fold_cases(["0"])[0])
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        splits_path = self.folder / "splits.json"
        if not splits_path.is_file():
            raise PlanError(f"{splits_path} not found; run vfnet_plan_and_preprocess first")
        self.splits = read_json(splits_path)

    @property
    def fold_names(self) -> list[str]:
        return list(self.splits["folds"])

    def fold_cases(self, folds: list[str]) -> list[str]:
        """Case ids of the given folds, sorted."""
        out = []
        for fold in folds:
            if str(fold) not in self.splits["folds"]:
                raise PlanError(f"fold '{fold}' not in splits.json (folds: {', '.join(self.fold_names)})")
            out += self.splits["folds"][str(fold)]
        return sorted(out)

    def fold_of(self, case_id: str) -> str:
        for fold, cases in self.splits["folds"].items():
            if case_id in cases:
                return fold
        raise VfnetError(f"case {case_id} is in no fold of {self.folder / 'splits.json'}")

    @property
    def all_cases(self) -> list[str]:
        return self.fold_cases(self.fold_names)

    def load(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(image (C, z, y, x) float32, label (z, y, x) uint8 class indices)."""
        mode = "r" if mmap else None
        base = self.folder / ARRAYS_DIR
        return (np.load(base / f"{case_id}_image.npy", mmap_mode=mode),
                np.load(base / f"{case_id}_label.npy", mmap_mode=mode))

    def properties(self, case_id: str) -> dict:
        return read_json(self.folder / ARRAYS_DIR / f"{case_id}.json")
