"""``vfnet_train 2d|vfn|3d`` as library calls: one training unit with the steps around it.

Training (:mod:`vfnet.training`) stops at a unit's final checkpoint; it never imports the
stages above it. This module sits above them all and joins the steps a unit needs:

- a 2D or 3D unit trains, then its final checkpoint predicts the unit's held-out folds
  (:mod:`vfnet.inference`), passed to training as its ``after_training`` callback so the
  maps and summary.json are written before an ``--overwrite`` staging folder is swapped in;
- a VFN unit first gets its fusion set (:func:`vfnet.fusion.fusion_set.build_fusion_set`)
  when it is missing (a pure function of finished 2D units), then trains on it.

Example:
    >>> train_2d_unit("Task04", "axial", "0", preset="quick")   # checkpoints + held-out maps
    >>> train_vfn_unit("Task04", "0", preset="quick")          # fusion set if missing, then the VFN
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vfnet import paths
from vfnet.errors import VfnetError
from vfnet.fusion.fusion_set import build_fusion_set
from vfnet.inference.predict2d import predict_trained_unit_2d
from vfnet.inference.predict3d import predict_trained_unit_3d
from vfnet.training.ddp import DistributedContext
from vfnet.training.train2d import fit_2d_unit
from vfnet.training.train3d import fit_3d_unit
from vfnet.training.train_vfn import fit_vfn_unit, vfn_network_name
from vfnet.training.units import unit_finished


def train_2d_unit(dataset: str | int | None, view: str, unit: str, preset: str = "default", device: str = "auto",
                  num_threads: int | None = None, resume: bool = False, quiet: bool = False, overwrite: bool = False,
                  schedule_overrides: dict | None = None, features: Sequence[int] | None = None,
                  distributed: DistributedContext | None = None) -> Path:
    """Train the 2D U-Net of ``view`` on ``unit`` and predict the unit's held-out folds.

    Arguments as :func:`vfnet.training.train2d.fit_2d_unit`.

    Returns:
        The unit's results folder (checkpoints, ``predictions/<case>.npz``, summary.json).
    """
    return fit_2d_unit(dataset, view, unit, preset, device, num_threads, resume, quiet, overwrite,
                       schedule_overrides, features, after_training=predict_trained_unit_2d, distributed=distributed)


def train_3d_unit(dataset: str | int | None, unit: str, preset: str = "default", device: str = "auto",
                  num_threads: int | None = None, resume: bool = False, quiet: bool = False, overwrite: bool = False,
                  schedule_overrides: dict | None = None, features: Sequence[int] | None = None,
                  stop_at: int | None = None, distributed: DistributedContext | None = None) -> Path:
    """Train the 3D U-Net on ``unit`` and predict the unit's held-out folds.

    Arguments as :func:`vfnet.training.train3d.fit_3d_unit`.
    """
    return fit_3d_unit(dataset, unit, preset, device, num_threads, resume, quiet, overwrite, schedule_overrides,
                       features, stop_at, after_training=predict_trained_unit_3d, distributed=distributed)


def train_vfn_unit(dataset: str | int | None, unit: str, preset: str = "default", use_image: bool = True,
                   device: str = "auto", num_threads: int | None = None, resume: bool = False,
                   quiet: bool = False, schedule_overrides: dict | None = None, stop_at: int | None = None,
                   overwrite: bool = False, seed: int | None = None,
                   distributed: DistributedContext | None = None, prior: str | None = None,
                   suffix: str = "", view_dropout: float = 0.0, validation_cases: int | None = None,
                   min_gain: float | None = None, map_jitter: float | None = None,
                   min_gain_se: float | None = None, view_symmetric: bool | None = None,
                   training_cases: int | None = None) -> Path:
    """Train VFN unit ``unit`` (a fold, ``all`` or ``holdout``), building its fusion set first when missing.

    Arguments as :func:`vfnet.training.train_vfn.fit_vfn_unit`.

    Returns:
        The unit's results folder (``<results>/<preset>/vfn/<unit>`` or ``vfn_noimage``).
    """
    preprocessed = paths.preprocessed_dataset(dataset)
    unit_dir = paths.UnitPaths.of(paths.results_root() / preprocessed.name, preset, vfn_network_name(use_image),
                                  str(unit)).folder
    folder = paths.fusion_set_dir(preprocessed, preset, str(unit))
    # a finished unit kept as it is (resumed, or refused without --overwrite) needs no fusion set
    if not (folder / "manifest.json").is_file() and (overwrite or not unit_finished(unit_dir)):
        if distributed is not None and not distributed.is_main:
            raise VfnetError(f"{folder} has no fusion set; build it first with vfnet_build_fusion_set "
                             "(DDP ranks do not build it at once)")
        build_fusion_set(preprocessed.name, str(unit), preset, quiet=quiet)
    return fit_vfn_unit(preprocessed.name, unit, preset, use_image, device, num_threads, resume, quiet,
                        schedule_overrides, stop_at, overwrite, seed, distributed, prior, suffix, view_dropout,
                        validation_cases, min_gain, map_jitter, min_gain_se, view_symmetric, training_cases)
