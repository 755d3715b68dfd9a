"""The trained VFN of a unit folder, loaded for cross-validation, reports and prediction."""

from __future__ import annotations

from pathlib import Path

import torch

from vfnet.checkpoint import load_checkpoint
from vfnet.errors import ModelNotFoundError
from vfnet.experiment_planning.plans import Plan
from vfnet.networks.vfn import build_vfn, state_has_view_prior
from vfnet.resolution import normalise_factor

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
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("network", checkpoint)
    model = build_vfn(plan, plan.num_channels, plan.num_classes, use_image=use_image,
                      view_prior=state_has_view_prior(state))
    model.load_state_dict(state)
    # the in-plane resolution the VFN trained at travels with its weights (see vfnet.resolution)
    model.input_downsample = normalise_factor(checkpoint.get("metadata", {}).get("input_downsample"))
    return model.to(device).eval()
