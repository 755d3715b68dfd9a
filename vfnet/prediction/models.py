"""The trained models a prediction needs, loaded once: view networks per fold and the VFN, or the 3D U-Nets."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.device import resolve_device
from vfnet.errors import ModelNotFoundError, PlanError, VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.fusion.methods import METHODS, VfnConfig, class_argmax, fuse, fused_probabilities
from vfnet.fusion.models import FINAL_CHECKPOINT, checkpoint_name, load_vfn, require_checkpoint
from vfnet.fusion.postprocess import apply_postprocessing
from vfnet.fusion.stack import load_stack, stack_path
from vfnet.inference.predict2d import load_unit_network, predict_volume_2d
from vfnet.inference.predict3d import load_unit_network_3d, predict_volume_3d, window_stride
from vfnet.views import VIEWS, permutation


def deployment_units(plan: Plan, folds: list[str] | None) -> tuple[list[str], list[str]]:
    """(2D units to ensemble, fusion units) for new data.

    With the K fold units of a CCA plan the fusion units are the same K folds: fold k's VFN (or
    stack) fuses fold unit k's maps, exactly the pairs cross-validation scored, and the K fused
    probability maps are averaged. ``-f all`` pairs the 2D units ``all`` with VFN ``all``.
    """
    if plan["split_mode"] == "holdout":
        return (folds or ["holdout"]), ["holdout"]
    if folds == ["all"]:
        return ["all"], ["all"]
    units = folds or list(plan["fold_names"])
    return units, list(units)


# fusion method -> results folder of its trained models (stack weights live in <preset>/stack/)
FUSION_NETWORKS = {**paths.VFN_METHOD_NETWORKS, "vfn-all": paths.VFN_NETWORK}
PREDICT_METHODS = (*METHODS, "vfn-all")


def tta_axes(plan: Plan) -> tuple[int, ...]:
    """Canonical axes (0 z, 1 y, 2 x) the views were mirrored along in training: the axes ``--tta``
    mirrors. Planned: none (mirroring swaps left/right labels)."""
    axes = set()
    for view in VIEWS:
        view_axes = permutation(view)[1:]  # canonical axes of the slice's height and width
        axes.update(view_axes[int(a)] for a in plan.view(view).mirror_axes)
    return tuple(sorted(axes))


@dataclass
class DeployedModels:
    """View networks (fold ensemble per view) and the fusion models of one trained dataset.

    ``fusion_models[method]`` holds one model per fold unit (paired: fold k's model fuses fold k's
    maps and the fused probability maps are averaged) or a single model that fuses the mean of the
    views' fold ensembles (``vfn-all``, ``-f all``, holdout).
    """

    plan: Plan
    folds: list[str]
    fusion_method: str
    default_postprocess: bool | tuple[int, ...]  # True: every label; a tuple: the classes crossval chose
    device: torch.device
    view_networks: dict[str, list[torch.nn.Module]] = field(default_factory=dict)
    fusion_models: dict[str, list] = field(default_factory=dict)
    batch_size: int | None = None  # slices per 2D forward pass; None: from the free memory and slice size
    fusion_units: list[str] | None = None  # the VFN / stack units loaded, when the fusion has models
    step_size: float | None = None  # VFN windows' step as a fraction of the patch; None: the planned stride
    quiet: bool = True  # no progress bars inside a case

    def vfn_config(self) -> VfnConfig:
        """The planned VFN windows, with :attr:`step_size` when set."""
        config = VfnConfig.from_plan(self.plan, device=self.device, quiet=self.quiet)
        if self.step_size is not None:
            config.stride = window_stride(config.patch_size, self.step_size)
        return config

    def fold_view_probabilities(self, image: np.ndarray, tta: bool = False) -> list[dict[str, np.ndarray]]:
        """Per fold unit, per view, the softmax maps (averaged over mirrorings along :func:`tta_axes` with ``tta``)."""
        axes = tta_axes(self.plan) if tta else ()
        flips = [()] + [combo for n in range(1, len(axes) + 1) for combo in combinations(axes, n)]
        out = [{} for _ in self.folds]
        for view in VIEWS:
            context = self.plan.view(view).context_slices
            for k, network in enumerate(self.view_networks[view]):
                total = None
                for flip in flips:
                    dims = [a + 1 for a in flip]
                    flipped = np.flip(image, dims) if flip else image
                    probs = predict_volume_2d(network, np.ascontiguousarray(flipped), view, context,
                                              self.device, self.batch_size, self.quiet)
                    probs = np.flip(probs, dims) if flip else probs
                    total = probs if total is None else total + probs
                out[k][view] = total / len(flips)
        return out

    def view_probabilities(self, image: np.ndarray, tta: bool = False) -> dict[str, np.ndarray]:
        """Per view, the mean over the fold ensemble (and mirrorings with ``tta``) of the softmax maps."""
        return _mean_maps(self.fold_view_probabilities(image, tta))

    def segment(self, method: str, image: np.ndarray, tta: bool = False, postprocess: bool | tuple[int, ...] = False,
                probabilities: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(labels (z, y, x) uint8, the views' mean maps) of ``image`` fused with ``method``.

        ``postprocess``: True cleans every label, a tuple the classes it names. With
        ``probabilities`` the maps also hold ``"fused"``: the fused class probabilities (K, z, y, x)
        before post-processing (majority and STAPLE have none: the one-hot of their labels).
        """
        per_fold = self.fold_view_probabilities(image, tta)
        mean_maps = _mean_maps(per_fold)
        models = self.fusion_models.get(method, [])
        config = self.vfn_config()
        if method.startswith("vfn") and tta:
            config.mirror = tuple(self.plan.vfn.mirror_axes)  # the axes the VFN trained mirrored along
        base = "vfn" if method == "vfn-all" else method
        if len(models) > 1 or (models and len(per_fold) == 1):
            fused = None
            for maps, model in zip(per_fold, models):
                probs = fused_probabilities(base, maps, image, model=model, vfn_config=config)
                fused = probs if fused is None else fused + probs
            fused = fused / len(models)
            labels = class_argmax(fused)
        else:
            model = models[0] if models else None
            labels = fuse(base, mean_maps, image, model=model, vfn_config=config)
            fused = None
            if probabilities and base in ("mean", "stack", "vfn", "vfn-noimage"):
                fused = fused_probabilities(base, mean_maps, image, model=model, vfn_config=config)
        if probabilities:
            if fused is None:
                fused = np.eye(self.plan.num_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
            mean_maps = {**mean_maps, "fused": fused}
        labels = apply_postprocessing(labels, postprocess, self.plan.num_classes)
        return labels, mean_maps


def _mean_maps(per_fold: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {view: sum(maps[view] for maps in per_fold) / len(per_fold) for view in per_fold[0]}


def _train_hint(dataset: str, preset: str, network: str, unit: str) -> str:
    if network.startswith("2d_"):
        return f"vfnet_train 2d {network[3:]} {unit} -d {dataset} --preset {preset}"
    if network == "stack":
        return f"vfnet_crossval -d {dataset} --preset {preset}"
    if network == "3d":
        return f"vfnet_train 3d {unit} -d {dataset} --preset {preset}"
    flag = " --no-image" if network == "vfn_noimage" else ""
    return (f"vfnet_build_fusion_set -f {unit} -d {dataset} --preset {preset} && "
            f"vfnet_train vfn {unit}{flag} -d {dataset} --preset {preset}")


def load_fusion_models(results: Path, preset: str, method: str, plan: Plan, units: list[str], device,
                       checkpoint: str | None = None) -> list:
    """The fusion models of ``method`` for ``units`` (one each), in their order.

    ``checkpoint`` None: each VFN's best-validated checkpoint (else final); ``final`` or ``best``: that one.

    Raises:
        ModelNotFoundError: one is missing; the message names the command that makes it.
    """
    name = results.name
    out = []
    for unit in units:
        if method == "stack":
            weights = load_stack(results, preset, unit)
            if weights is None:
                raise ModelNotFoundError(f"no stack weights for unit {unit} in {stack_path(results, preset, unit)}; "
                                         f"fit them with: {_train_hint(name, preset, 'stack', unit)}")
            out.append(weights)
            continue
        network = FUSION_NETWORKS[method]
        unit_paths = paths.UnitPaths.of(results, preset, network, unit)
        if not unit_paths.final_checkpoint.is_file():
            raise ModelNotFoundError(f"no trained {network} model '{unit}' in {unit_paths.folder}; train it with: "
                                     f"{_train_hint(name, preset, network, unit)} (or use --fusion mean)")
        out.append(load_vfn(unit_paths.folder, plan, method != "vfn-noimage", device, checkpoint))
    return out


def recorded_postprocessing(best: dict, plan: Plan) -> bool | tuple[int, ...]:
    """The post-processing crossval chose (best_method.json): the classes whose largest component to keep.

    Records from before per-label decisions hold only ``postprocess`` (every label or none).
    """
    if "postprocess_labels" not in best:
        return bool(best.get("postprocess", False))
    ordered = [name for name, _ in sorted(plan["labels"].items(), key=lambda kv: kv[1])]
    return tuple(ordered.index(name) for name in best["postprocess_labels"] if name in ordered)


def _check_units(plan: Plan, network: str, units: list[str], results: Path, preset: str) -> None:
    """Every unit asked for is one of the plan's; the error names the plan's units and the trained ones."""
    known = [u["name"] for u in plan.units(network)]
    unknown = [u for u in units if u not in known]
    if unknown:
        trained = paths.trained_units(results, preset, "2d_axial" if network == "2d" else network)
        default = "holdout" if plan["split_mode"] == "holdout" else "all K folds"
        raise PlanError(
            f"unit(s) {', '.join(unknown)} are not in the {plan['split_mode']} plan of {results.name} (its {network} "
            f"units: {', '.join(known)}; trained in preset {preset}: {', '.join(trained) or 'none'}); leave out "
            f"-f to use {default}")


def _missing_unit(results: Path, preset: str, network: str, unit: str, what: str) -> ModelNotFoundError:
    trained = paths.trained_units(results, preset, network)
    return ModelNotFoundError(
        f"no trained {what} for unit {unit} in {paths.UnitPaths.of(results, preset, network, unit).folder} "
        f"(trained {network} "
        f"units of preset {preset}: {', '.join(trained) or 'none'}; trained presets: "
        f"{', '.join(paths.trained_presets(results)) or 'none'}); train it with: "
        f"{_train_hint(results.name, preset, network, unit)}")


def load_deployed_models(dataset: str | int | None, preset: str | None = None, folds: list[str] | None = None,
                         fusion: str | None = None, device: str = "auto", checkpoint: str | None = None
                         ) -> DeployedModels:
    """Load what ``vfnet_predict`` needs from ``$vfnet_results/TaskXX_Name`` alone.

    Args:
        dataset: id or name of a trained dataset (None: the only one).
        preset: the training preset whose models to use (None: the only trained one).
        folds: 2D units to ensemble (default: every fold unit, or holdout).
        fusion: fusion method (default: the one crossval recorded).
        device: auto, cpu or cuda.
        checkpoint: ``final`` or ``best`` (the one that validated best) for every network; None: the
            views' final checkpoints and each VFN's best, the models cross-validation scored.
    """
    results = paths.results_dataset(dataset)
    preset = paths.resolve_preset(results, preset)
    plan = Plan.load(results)
    torch_device = resolve_device(device)
    units, fusion_units = deployment_units(plan, folds)
    _check_units(plan, "2d", units, results, preset)
    checkpoint_file = checkpoint_name(checkpoint or "final")
    best_path = results / preset / "crossval" / "best_method.json"
    fallback = {"method": plan.fusion.fallback_method, "postprocess": False}
    best = read_json(best_path) if best_path.is_file() else fallback
    method = fusion or best["method"]
    if method not in PREDICT_METHODS:
        raise VfnetError(f"fusion '{method}' unknown; expected one of {', '.join(PREDICT_METHODS)}")
    models = DeployedModels(plan, units, method, recorded_postprocessing(best, plan) if not fusion else False,
                            torch_device)
    for view in VIEWS:
        models.view_networks[view] = []
        for unit in units:
            unit_dir = paths.UnitPaths.of(results, preset, paths.view_network(view), unit).folder
            if not (unit_dir / FINAL_CHECKPOINT).is_file():
                raise _missing_unit(results, preset, paths.view_network(view), unit, f"{view} model")
            require_checkpoint(unit_dir, checkpoint_file)
            models.view_networks[view].append(load_unit_network(unit_dir, plan, view, torch_device, checkpoint_file))
    if method in ("stack", "vfn", "vfn-noimage", "vfn-all"):
        fusion_units = ["all"] if method == "vfn-all" else fusion_units
        models.fusion_models[method] = load_fusion_models(results, preset, method, plan, fusion_units, torch_device,
                                                          checkpoint)
        models.fusion_units = fusion_units
    return models


@dataclass
class UNet3DModels:
    """The 3D U-Net baseline of one trained dataset: a fold ensemble whose softmax maps are averaged."""

    plan: Plan
    folds: list[str]
    device: torch.device
    networks: list[torch.nn.Module] = field(default_factory=list)
    batch_size: int = 2
    step_size: float | None = None  # windows' step as a fraction of the patch; None: the planned stride
    quiet: bool = True

    def probabilities(self, image: np.ndarray, tta: bool = False) -> np.ndarray:
        """Mean softmax (num_classes, z, y, x) of the fold networks (and, with ``tta``, of mirrorings along
        the planned ``unet3d.mirror_axes``)."""
        unet3d = self.plan.unet3d
        stride = unet3d.stride if self.step_size is None else window_stride(unet3d.patch_size, self.step_size)
        total = None
        for network in self.networks:
            probs = predict_volume_3d(network, image, unet3d.patch_size, stride, self.device, self.batch_size,
                                      mirror_axes=unet3d.mirror_axes if tta else (), quiet=self.quiet)
            total = probs if total is None else total + probs
        return total / len(self.networks)

    def segment(self, probabilities: np.ndarray, postprocess: bool | tuple[int, ...] = False) -> np.ndarray:
        """Class labels (z, y, x) uint8: the argmax, optionally with only the largest component per label."""
        labels = class_argmax(probabilities)
        return apply_postprocessing(labels, postprocess, self.plan.num_classes)


def load_3d_models(dataset: str | int | None, preset: str | None = None, folds: list[str] | None = None,
                   device: str = "auto", checkpoint: str | None = None) -> UNet3DModels:
    """Load the 3D U-Net fold ensemble that ``vfnet_predict --model 3d`` needs from ``$vfnet_results`` alone.

    Args:
        dataset: id or name of a trained dataset (None: the only one).
        preset: the training preset whose models to use (None: the only one with trained 3D units).
        folds: 3D units to ensemble (default: the K fold units in CCA mode, ``holdout`` in holdout
            mode; ``["all"]``: the unit trained on every case).
        device: auto, cpu or cuda.
        checkpoint: ``final`` (None) or ``best``.
    """
    results = paths.results_dataset(dataset)
    preset = paths.resolve_preset(results, preset, "3d")
    name = results.name
    plan = Plan.load(results)
    torch_device = resolve_device(device)
    units = folds or (["holdout"] if plan["split_mode"] == "holdout" else list(plan["fold_names"]))
    models = UNet3DModels(plan, [str(u) for u in units], torch_device)
    for unit in models.folds:
        _check_units(plan, "3d", [unit], results, preset)
        unit_dir = paths.UnitPaths.of(results, preset, paths.UNET3D_NETWORK, unit).folder
        hint = f"vfnet_train 3d {unit} -d {name} --preset {preset}"
        if not (unit_dir / FINAL_CHECKPOINT).is_file():
            raise _missing_unit(results, preset, "3d", unit, "3D U-Net")
        require_checkpoint(unit_dir, checkpoint_name(checkpoint or "final"))
        models.networks.append(load_unit_network_3d(unit_dir, plan, torch_device,
                                                    checkpoint_name(checkpoint or "final"), hint=hint))
    return models
