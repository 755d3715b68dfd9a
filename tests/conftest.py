"""Shared fixtures: vfnet folders in a temporary place, synthetic datasets, the shared real data."""

from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest
import torch

from vfnet import paths

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path:
    """../shared/data beside the clone; skip only when it is absent and CI is unset."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    if os.environ.get("CI"):
        pytest.fail(f"real data folder {SHARED_DATA} is missing on CI")
    pytest.skip(f"real data folder {SHARED_DATA} is absent")


@pytest.fixture
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture
def vfnet_env(tmp_path, monkeypatch) -> Path:
    """Point vfnet_raw / vfnet_preprocessed / vfnet_results into tmp_path."""
    for var in paths.ENV_VARS:
        folder = tmp_path / var
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
    return tmp_path


@pytest.fixture
def demo_raw(vfnet_env) -> Path:
    """A tiny synthetic raw dataset (8 training cases, 2 test cases)."""
    from vfnet.demo_data import make_demo_dataset

    return make_demo_dataset(vfnet_env / "vfnet_raw", num_train=8, num_test=2, shape=(16, 24, 20))


@pytest.fixture
def demo_preprocessed(demo_raw) -> Path:
    """The tiny synthetic dataset, planned (4-fold CCA) and preprocessed."""
    from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess

    plan_and_preprocess(None, num_processes=1, quiet=True)
    return paths.preprocessed_root() / demo_raw.name


@pytest.fixture
def one_torch_thread():
    """Training tests run on one torch thread (steadier on shared CI cores); the count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _keep_locale():
    """Tests that write DICOM with SimpleITK leave GDCM's C locale behind; restore it for the next test."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def demo_workspace(tmp_path_factory, name: str, num_test: int = 2, shape: tuple[int, int, int] = (16, 24, 20)):
    """(root, raw dataset folder, MonkeyPatch) of a demo dataset planned in holdout mode in its own folders.

    For module-scoped fixtures (the ``monkeypatch`` fixture is function-scoped); call ``undo()`` after.
    """
    from vfnet.demo_data import make_demo_dataset
    from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess

    root = tmp_path_factory.mktemp(name)
    monkey = pytest.MonkeyPatch()
    for var in paths.ENV_VARS:
        (root / var).mkdir()
        monkey.setenv(var, str(root / var))
    raw = make_demo_dataset(root / "vfnet_raw", num_train=9, num_test=num_test, shape=shape)
    plan_and_preprocess(None, num_processes=1, split_mode="holdout", quiet=True)
    return root, raw, monkey


def synthetic_plan(name: str = "Task07_Tiny", num_classes: int = 3, modality: str = "MRI", split_mode: str = "cca",
                   num_folds: int = 3, shape: tuple[int, int, int] = (36, 50, 35),
                   bbox: tuple[int, int, int] = (25, 35, 20)) -> dict:
    """A complete plans.json dict as the planner writes it, for one image channel of median ``shape`` (1 mm
    voxels) and median organ box ``bbox``, without a dataset on disk (the default: Hippocampus-like)."""
    from vfnet.dataset import DatasetInfo
    from vfnet.experiment_planning.plans import plan_experiment

    organs = {"organ": 1} if num_classes == 2 else {f"organ{k}": k for k in range(1, num_classes)}
    labels = {"background": 0, **organs}
    stats = {"mean": 50.0, "std": 10.0, "min": 0.0, "max": 100.0, "percentile_00_5": 1.0, "percentile_99_5": 99.0}
    fingerprint = {"num_cases": max(num_folds, 3), "median_spacing": [1.0, 1.0, 1.0], "shapes": [list(shape)],
                   "spacings": [[1.0, 1.0, 1.0]], "median_foreground_bbox": list(bbox),
                   "foreground_intensity": {"0": stats}}
    return plan_experiment(DatasetInfo(name, {0: modality}, labels), fingerprint, name, num_folds=num_folds,
                           split_mode=split_mode)
