"""What every training unit starts with: its dataset, plan entry, schedule, device and folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vfnet import paths
from vfnet.planning import copy_dataset_files
from vfnet.plans import Plan
from vfnet.training.trainer import resolve_device


@dataclass
class UnitSetup:
    """Resolved inputs of one unit: ``spec`` is its plans.json entry, ``out`` its results folder."""

    preprocessed: Path
    plan: Plan
    spec: dict
    schedule: dict
    device: torch.device
    out: Path


def prepare_unit(dataset: str | int | None, stage: str, network: str, unit: str, preset: str, device: str,
                 schedule_overrides: dict | None = None) -> UnitSetup:
    """Resolve a unit of ``stage`` (``2d``, ``vfn``, ``3d``) and create its results folder.

    Also copies plans, dataset.json and fingerprint beside the models so results are self-contained.
    """
    preprocessed = paths.preprocessed_dataset(dataset)
    plan = Plan.load(preprocessed)
    spec = plan.unit(stage, unit)
    schedule = {**plan.schedule(preset, stage), **(schedule_overrides or {})}
    torch_device = resolve_device(device)
    results = paths.results_root() / preprocessed.name
    copy_dataset_files(preprocessed, results)
    out = paths.unit_dir(results, preset, network, str(unit))
    out.mkdir(parents=True, exist_ok=True)
    return UnitSetup(preprocessed, plan, spec, schedule, torch_device, out)
