"""Unpacking zips from someone else: bounded sizes, checked checksums, staging folders that never linger.

A zip's own headers can lie about a member's size, so :func:`extract_member` counts the bytes
it actually decompresses and stops as soon as a member passes the size its manifest declares,
before writing more. Staging folders are named after the process that made them, so the next
install removes those whose process is gone (killed with ``kill -9``, say) and leaves the
folders of installs still running alone.

Example:
    >>> with staging_folder(root, ".vfnet_install_") as staging:
    ...     digest = extract_member(archive, info, staging / "plans.json", declared_bytes=812, label="m.zip")
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vfnet.atomic import _process_alive
from vfnet.errors import DISK_FULL, VfnetError

BLOCK = 1 << 20


def extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, declared_bytes: int,
                   label: str) -> str:
    """Decompress one member into ``target`` and return its SHA-256, never writing more than ``declared_bytes``.

    Args:
        archive: the open zip.
        info: the member.
        target: where its bytes go (the folder must exist).
        declared_bytes: the size the manifest gives; one more byte is an error.
        label: the zip's name for messages.

    Raises:
        VfnetError: the member is larger or smaller than declared, or the disk filled up.
    """
    digest, written = hashlib.sha256(), 0
    try:
        with archive.open(info) as source, open(target, "wb") as sink:
            while True:
                block = source.read(min(BLOCK, declared_bytes - written + 1))
                if not block:
                    break
                written += len(block)
                if written > declared_bytes:
                    raise VfnetError(f"{label}: {info.filename} is larger than the {declared_bytes} bytes its "
                                     f"manifest declares; refusing to install it")
                digest.update(block)
                sink.write(block)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise VfnetError(f"the disk filled up while unpacking {label} into {target.parent} "
                             f"({os.strerror(exc.errno)}); free some space and install again") from exc
        raise
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise VfnetError(f"{label}: {info.filename} cannot be decompressed ({exc}); the zip is corrupt") from exc
    if written != declared_bytes:
        raise VfnetError(f"{label}: {info.filename} holds {written} bytes, not the {declared_bytes} its manifest "
                         f"declares; the zip is corrupt")
    return digest.hexdigest()


def remove_stale_staging(root: Path, prefix: str) -> list[Path]:
    """Remove the staging folders under ``root`` whose process no longer runs; return them."""
    removed = []
    for folder in Path(root).glob(f"{prefix}*"):
        pid = folder.name[len(prefix):].split("_", 1)[0]
        if folder.is_dir() and (not pid.isdigit() or not _process_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def staging_folder(root: Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden folder under ``root`` named after this process, removed however the block ends."""
    remove_stale_staging(root, prefix)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}_", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
