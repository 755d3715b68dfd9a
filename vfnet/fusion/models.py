"""The trained VFN of a unit folder, loaded for cross-validation, reports and prediction."""

from __future__ import annotations

from pathlib import Path

import torch

from vfnet.checkpoint import load_checkpoint
from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.networks.vfn import build_vfn, state_view_prior, state_view_symmetric
from vfnet.paths import BEST_CHECKPOINT, FINAL_CHECKPOINT
from vfnet.resolution import normalise_factor

CHECKPOINTS = {"final": FINAL_CHECKPOINT, "best": BEST_CHECKPOINT}


def checkpoint_name(checkpoint: str) -> str:
    """``final`` → ``checkpoint_final.pth``, ``best`` → ``checkpoint_best.pth`` (nnU-Net's ``-chk``)."""
    if checkpoint in CHECKPOINTS.values():
        return checkpoint
    if checkpoint not in CHECKPOINTS:
        raise VfnetError(f"checkpoint '{checkpoint}' unknown; expected one of {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[checkpoint]


def require_checkpoint(unit_dir: Path, name: str) -> None:
    if not (Path(unit_dir) / name).is_file():
        raise ModelNotFoundError(f"{Path(unit_dir) / name} not found (an exported model carries only the final "
                                 "checkpoints of its 2D units); predict with -chk final")


def load_vfn(unit_dir: Path, plan: Plan, use_image: bool = True, device: str | torch.device = "cpu",
             checkpoint: str | None = None, fold_batch_norm: bool = True):
    """The trained VFN of a finished unit folder, in eval mode, ready to predict.

    ``fold_batch_norm`` folds its BatchNorms into the convolutions (the same output, faster; see
    :meth:`VolumetricFusionNet.fold_batch_norm`); False gives the network as it was saved.

    ``checkpoint`` None (the default) takes the checkpoint that validated best (every validation
    case, iteration 0 included) when there is one, else the final one; ``final`` or ``best`` takes that one.
    """
    path = Path(unit_dir) / FINAL_CHECKPOINT
    if not path.is_file():
        raise ModelNotFoundError(f"{path} not found")
    if checkpoint is not None:
        path = Path(unit_dir) / checkpoint_name(checkpoint)
        require_checkpoint(unit_dir, path.name)
    elif (Path(unit_dir) / BEST_CHECKPOINT).is_file():
        path = Path(unit_dir) / BEST_CHECKPOINT
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("network", checkpoint)
    model = build_vfn(plan, plan.num_channels, plan.num_classes, use_image=use_image,
                      view_prior=state_view_prior(state), view_symmetric=state_view_symmetric(state))
    model.load_state_dict(state)
    # the in-plane resolution the VFN trained at travels with its weights (see vfnet.resolution)
    model.input_downsample = normalise_factor(checkpoint.get("metadata", {}).get("input_downsample"))
    return (model.fold_batch_norm() if fold_batch_norm else model.eval()).to(device)
