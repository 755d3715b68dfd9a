"""The trained models a prediction needs, loaded once: view networks per fold and the VFN, or the 3D U-Nets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.fusion.methods import METHODS, VfnConfig, fuse
from vfnet.fusion.postprocess import keep_largest_component
from vfnet.inference.predict2d import load_unit_network, predict_volume_2d
from vfnet.inference.predict3d import load_unit_network_3d, predict_volume_3d
from vfnet.networks.vfn import build_vfn, state_has_view_prior
from vfnet.plans import Plan
from vfnet.training.trainer import resolve_device
from vfnet.views import VIEWS

FINAL_CHECKPOINT = "checkpoint_final.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"


def load_vfn(unit_dir: Path, plan: Plan, use_image: bool = True, device: str | torch.device = "cpu"):
    """The trained VFN of a finished unit folder, in eval mode: the checkpoint that validated best
    (every validation case, iteration 0 included), else the final one."""
    path = Path(unit_dir) / FINAL_CHECKPOINT
    if not path.is_file():
        raise ModelNotFoundError(f"{path} not found")
    if (Path(unit_dir) / BEST_CHECKPOINT).is_file():
        path = Path(unit_dir) / BEST_CHECKPOINT
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("network", state)
    model = build_vfn(plan, plan.num_channels, plan.num_classes, use_image=use_image,
                      view_prior=state_has_view_prior(state))
    model.load_state_dict(state)
    return model.to(device).eval()


def deployment_units(plan: Plan, folds: list[str] | None) -> tuple[list[str], str]:
    """(2D units to ensemble, VFN unit) for new data."""
    if plan["split_mode"] == "holdout":
        return (folds or ["holdout"]), "holdout"
    if folds == ["all"]:
        return ["all"], "all"
    return (folds or list(plan["fold_names"])), "all"


@dataclass
class DeployedModels:
    """View networks (fold ensemble per view) and the fusion model of one trained dataset."""

    plan: Plan
    folds: list[str]
    fusion_method: str
    default_postprocess: bool
    device: torch.device
    view_networks: dict[str, list[torch.nn.Module]] = field(default_factory=dict)
    vfn_models: dict[str, torch.nn.Module] = field(default_factory=dict)
    batch_size: int = 64
    vfn_unit: str | None = None  # the VFN unit loaded, when the fusion is a VFN

    def view_probabilities(self, image: np.ndarray, tta: bool = False) -> dict[str, np.ndarray]:
        """Per view, the mean over the fold ensemble (and mirrorings with ``tta``) of the softmax maps."""
        out = {}
        flips = [()] + ([(1,), (2,), (1, 2)] if tta else [])
        for view in VIEWS:
            context = self.plan["views"][view]["context_slices"]
            total = None
            for network in self.view_networks[view]:
                for axes in flips:
                    flipped = np.flip(image, [a + 1 for a in axes]) if axes else image
                    probs = predict_volume_2d(network, np.ascontiguousarray(flipped), view, context,
                                              self.device, self.batch_size)
                    probs = np.flip(probs, [a + 1 for a in axes]) if axes else probs
                    total = probs if total is None else total + probs
            out[view] = total / (len(self.view_networks[view]) * len(flips))
        return out

    def fuse(self, method: str, view_probs: dict[str, np.ndarray], image: np.ndarray,
             postprocess: bool = False) -> np.ndarray:
        model = self.vfn_models.get(method)
        config = VfnConfig.from_plan(self.plan, device=self.device)
        return fuse(method, view_probs, image, model=model, vfn_config=config, postprocess=postprocess)


def _train_hint(dataset: str, preset: str, network: str, unit: str) -> str:
    if network.startswith("2d_"):
        return f"vfnet_train 2d {network[3:]} {unit} -d {dataset} --preset {preset}"
    flag = " --no-image" if network == "vfn_noimage" else ""
    return (f"vfnet_build_fusion_set -f {unit} -d {dataset} --preset {preset} && "
            f"vfnet_train vfn {unit}{flag} -d {dataset} --preset {preset}")


def own_fold_vfn(results: Path, preset: str, network: str, plan: Plan, units: list[str]) -> str | None:
    """With one fold unit k, the VFN of test fold k when it is trained (it fused exactly unit k's
    maps in the cross-validation and never saw fold k); else None, and the deployment VFN is used."""
    if len(units) != 1 or units[0] not in plan["fold_names"]:
        return None
    own = units[0]
    return own if (paths.unit_dir(results, preset, network, own) / FINAL_CHECKPOINT).is_file() else None


def load_deployed_models(dataset: str | int | None, preset: str = "default", folds: list[str] | None = None,
                         fusion: str | None = None, device: str = "auto") -> DeployedModels:
    """Load what ``vfnet_predict`` needs from ``$vfnet_results/TaskXX_Name`` alone."""
    results = paths.results_dataset(dataset)
    name = results.name
    plan = Plan.load(results)
    torch_device = resolve_device(device)
    units, vfn_unit = deployment_units(plan, folds)
    best_path = results / preset / "crossval" / "best_method.json"
    best = read_json(best_path) if best_path.is_file() else {"method": "vfn", "postprocess": False}
    method = fusion or best["method"]
    if method not in METHODS:
        raise VfnetError(f"fusion '{method}' unknown; expected one of {', '.join(METHODS)}")
    models = DeployedModels(plan, units, method, bool(best.get("postprocess", False)) if not fusion else False,
                            torch_device)
    for view in VIEWS:
        models.view_networks[view] = []
        for unit in units:
            unit_dir = paths.unit_dir(results, preset, f"2d_{view}", unit)
            if not (unit_dir / FINAL_CHECKPOINT).is_file():
                raise ModelNotFoundError(f"no trained {view} model for unit {unit} in {unit_dir}; train it with: "
                                         f"{_train_hint(name, preset, f'2d_{view}', unit)}")
            models.view_networks[view].append(load_unit_network(unit_dir, plan, view, torch_device))
    if method.startswith("vfn"):
        network = "vfn" if method == "vfn" else "vfn_noimage"
        own = own_fold_vfn(results, preset, network, plan, units)
        vfn_unit = own or vfn_unit
        unit_dir = paths.unit_dir(results, preset, network, vfn_unit)
        if not (unit_dir / FINAL_CHECKPOINT).is_file():
            raise ModelNotFoundError(f"no trained {network} model '{vfn_unit}' in {unit_dir}; train it with: "
                                     f"{_train_hint(name, preset, network, vfn_unit)} (or use --fusion majority)")
        models.vfn_models[method] = load_vfn(unit_dir, plan, method == "vfn", torch_device)
        models.vfn_unit = vfn_unit
    return models


@dataclass
class UNet3DModels:
    """The 3D U-Net baseline of one trained dataset: a fold ensemble whose softmax maps are averaged."""

    plan: Plan
    folds: list[str]
    device: torch.device
    networks: list[torch.nn.Module] = field(default_factory=list)
    batch_size: int = 2

    def probabilities(self, image: np.ndarray, tta: bool = False) -> np.ndarray:
        """Mean softmax (num_classes, z, y, x) of the fold networks (and mirrorings with ``tta``)."""
        patch = self.plan["unet3d"]["patch_size"]
        total = None
        for network in self.networks:
            probs = predict_volume_3d(network, image, patch, self.device, self.batch_size, tta=tta)
            total = probs if total is None else total + probs
        return total / len(self.networks)

    def segment(self, probabilities: np.ndarray, postprocess: bool = False) -> np.ndarray:
        """Class labels (z, y, x) uint8: the argmax, optionally with only the largest component per label."""
        labels = np.argmax(probabilities, axis=0).astype(np.uint8)
        return keep_largest_component(labels, self.plan.num_classes) if postprocess else labels


def load_3d_models(dataset: str | int | None, preset: str = "default", folds: list[str] | None = None,
                   device: str = "auto") -> UNet3DModels:
    """Load the 3D U-Net fold ensemble that ``vfnet_predict --model 3d`` needs from ``$vfnet_results`` alone.

    Args:
        dataset: id or name of a trained dataset (None: the only one).
        preset: the training preset whose models to use.
        folds: 3D units to ensemble (default: the K fold units in CCA mode, ``holdout`` in holdout
            mode; ``["all"]``: the unit trained on every case).
        device: auto, cpu or cuda.
    """
    results = paths.results_dataset(dataset)
    name = results.name
    plan = Plan.load(results)
    torch_device = resolve_device(device)
    units = folds or (["holdout"] if plan["split_mode"] == "holdout" else list(plan["fold_names"]))
    models = UNet3DModels(plan, [str(u) for u in units], torch_device)
    for unit in models.folds:
        plan.unit("3d", unit)  # an unknown unit lists the plan's 3D units
        unit_dir = paths.unit_dir(results, preset, "3d", unit)
        hint = f"vfnet_train 3d {unit} -d {name} --preset {preset}"
        if not (unit_dir / FINAL_CHECKPOINT).is_file():
            raise ModelNotFoundError(f"no trained 3D U-Net for unit {unit} in {unit_dir}; train it with: {hint}")
        models.networks.append(load_unit_network_3d(unit_dir, plan, torch_device, hint=hint))
    return models
