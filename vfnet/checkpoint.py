"""Checkpoints hold tensors and plain values only, so loading one can never run code.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a file that holds any
other Python object (a pickled class, a function, a numpy array of a custom type) is refused
with :class:`CheckpointError` instead of being unpickled. The writer side keeps to that
contract: metadata, configs and histories go through :func:`plain` (JSON-compatible values),
and the random number generator states through :func:`rng_state` (torch states are tensors,
python's and numpy's become lists and ints).

Example:
    >>> save_checkpoint({"network": net.state_dict(), "metadata": plain(meta)}, out / "checkpoint_final.pth")
    >>> state = load_checkpoint(out / "checkpoint_final.pth")
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfnet.atomic import atomic_path
from vfnet.errors import CheckpointError

# What an exported checkpoint keeps: the weights and what describes them, never optimizer,
# scheduler, scaler or random states.
WEIGHT_KEYS = ("network", "metadata", "config", "history", "iteration", "best_dice")


def plain(value: Any) -> Any:
    """``value`` as JSON-compatible python: numpy scalars and arrays, tuples and paths become plain values.

    Raises:
        TypeError: a value that has no plain form (a function, a custom object).
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} cannot be stored in a checkpoint (only plain values and tensors)")


def rng_state() -> dict:
    """The python, numpy and torch (and CUDA) random states as tensors, lists and ints."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (legacy tuples and arrays are accepted too)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` under a temporary name, check it is complete, then rename it onto ``path``.

    Raises:
        CheckpointError: the file came out empty (a full disk, a file-size limit).
    """
    path = Path(path)
    with atomic_path(path, suffix=".pth") as tmp:
        try:
            torch.save(state, tmp)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"could not write checkpoint {path} ({_reason(exc)}); free some disk space "
                                  f"and rerun with --continue") from exc
        if tmp.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} came out empty (full disk or file-size limit?); free some "
                                  f"disk space and rerun with --continue")
    return path


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, without torch's long advice."""
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or holds Python objects other
            than tensors and plain values (it could run code when loaded, so it is refused).
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(f"{path} holds Python objects besides tensors and plain values, which could run "
                                  f"code when loaded; refusing to load it (use a checkpoint written by vfnet)") from exc
        raise CheckpointError(f"{path} is corrupt ({_reason(exc)}); delete it and train or install it again") from exc
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} not found") from exc
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_reason(exc)}); delete it and train or install "
                              f"it again") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a vfnet checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def _legacy_numpy_globals() -> list:
    """numpy arrays in checkpoints written before the plain-state rule (random states): rebuilding an
    array runs no user code, and its items still go through the same restricted unpickler."""
    from numpy import dtypes

    names = [np.ndarray, np.dtype, dtypes.UInt32DType]
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    return names + [core.multiarray._reconstruct]


def weights_only_state(state: dict) -> dict:
    """The part of a training checkpoint that prediction needs (no optimizer, scheduler or random states)."""
    return {key: state[key] for key in WEIGHT_KEYS if key in state}
