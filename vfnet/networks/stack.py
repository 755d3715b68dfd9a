"""The ``stack`` model: a multinomial logistic regression on the views' log class probabilities.

Fitted here on fusion-set samples already in memory, so the VFN's trainer can use it as its view
prior (``"prior_weights": "stack"``); :mod:`vfnet.fusion.stack` reads the samples from a fusion
set, keeps the weights in ``stack.json`` and fuses with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from vfnet.views import VIEWS

EPSILON = 1e-4


def equal_weights(num_classes: int) -> torch.Tensor:
    """(K, 3·K) weights that give every view's log-probabilities the weight 1/3: the product of the views."""
    return torch.eye(num_classes).repeat(1, len(VIEWS)) / len(VIEWS)


def log_features(view_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(3·K, N) log-probabilities of the views' class maps, each (K, N)."""
    return np.concatenate([np.log(np.clip(p, EPSILON, 1.0)) for p in view_probs]).astype(np.float32)


def _fusion_set_probabilities(inputs: np.ndarray, num_image_channels: int, num_classes: int) -> list[np.ndarray]:
    """The three views' (K, N) class maps from a fusion-set sample (image channels, then C foreground maps per view)."""
    foreground = num_classes - 1
    maps = inputs[num_image_channels:].reshape(len(VIEWS), foreground, -1).astype(np.float32)
    background = np.clip(1.0 - maps.sum(1, keepdims=True), 0.0, 1.0)
    return [np.concatenate([background[v], maps[v]]) for v in range(len(VIEWS))]


def fit_stack_samples(samples: Iterable[tuple[np.ndarray, np.ndarray]], cases: Sequence[str],
                      num_image_channels: int, num_classes: int, *, seed: int, max_voxels: int) -> dict:
    """:func:`vfnet.fusion.stack.fit_stack` on fusion-set samples (inputs, label) of ``cases`` already read
    (also the VFN's stack prior)."""
    rng = np.random.default_rng(seed)
    per_case = max(1, max_voxels // max(1, len(cases)))
    features, targets = [], []
    for inputs, label in samples:
        flat = inputs.reshape(inputs.shape[0], -1)
        index = rng.choice(flat.shape[1], min(per_case, flat.shape[1]), replace=False)
        features.append(log_features(_fusion_set_probabilities(flat[:, index], num_image_channels, num_classes)))
        targets.append(label.reshape(-1)[index].astype(np.int64))
    x = torch.from_numpy(np.concatenate(features, axis=1).T)
    y = torch.from_numpy(np.concatenate(targets))
    k = num_classes
    weight = equal_weights(k).requires_grad_(True)
    bias = torch.zeros(k, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(x @ weight.T + bias, y)
        loss.backward()
        return loss

    with torch.no_grad():
        start = float(loss_fn(x @ weight.T + bias, y))
    optimizer.step(closure)
    with torch.no_grad():
        final = float(loss_fn(x @ weight.T + bias, y))
    return {"weight": weight.detach().tolist(), "bias": bias.detach().tolist(), "num_classes": k,
            "cases": list(cases), "voxels": len(y), "loss_start": start, "loss": final}
