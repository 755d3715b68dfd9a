"""Errors a user can hit. The CLI prints their message without a traceback and exits 2."""

from __future__ import annotations

import errno
import os

# OSError numbers that mean "the disk (or a quota, or a file-size limit) is full": the user's to fix
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class VfnetError(Exception):
    """Base class of every error that is the user's to fix (bad input, missing model...)."""


class DatasetNotFoundError(VfnetError):
    """A dataset name or id matches no dataset, or several."""


class DatasetIntegrityError(VfnetError):
    """The integrity check found problems; ``problems`` lists every one."""

    def __init__(self, problems: list[str], dataset: str = ""):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in dataset {dataset}".strip()
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class PlanError(VfnetError):
    """plans.json is missing, stale or does not know what was asked for."""


class ModelNotFoundError(VfnetError):
    """A trained model that a stage needs does not exist yet."""


class ImageReadError(VfnetError):
    """An image file could not be read."""


class ImageWriteError(VfnetError):
    """An image could not be written completely (full disk, file-size limit, read-only folder)."""


class CheckpointError(VfnetError):
    """A checkpoint is missing, truncated, corrupt or holds more than tensors and plain values."""


def disk_full_message(exc: OSError) -> str | None:
    """One sentence for an OSError that a full disk or a file-size limit caused, else None."""
    if exc.errno not in DISK_FULL:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{os.strerror(exc.errno).lower()}{where}; free some disk space (or raise the file-size limit) and rerun"


class PresetNotFoundError(ModelNotFoundError):
    """No trained preset fits what was asked; ``presets`` lists the trained ones."""

    def __init__(self, message: str, presets: list[str] | None = None):
        super().__init__(message)
        self.presets = list(presets or [])
