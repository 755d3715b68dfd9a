"""Move a trained dataset to another machine: export its deployment models as one zip, install it there.

The zip holds ``vfnet_model.json`` (the manifest) and, under ``TaskXX_Name/``, the files of the
results folder that prediction needs: plans.json, dataset.json, fingerprint.json, splits.json,
the deployment units (``checkpoint_final.pth``, ``unit.json``, ``summary.json``) and the
cross-validation records (``best_method.json``, ``crossval.json``, ``crossval.md``). The
manifest names the units and the SHA-256 of every file, so an install checks what it unpacks.

Example:
    >>> export_model("Task04", "hippocampus.zip", preset="default")
    >>> install_model("hippocampus.zip")          # on the other machine
    PosixPath('.../vfnet_results/Task04_Hippocampus')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

from vfnet import __version__, paths
from vfnet.atomic import atomic_path, read_json
from vfnet.checkpoint import WEIGHT_KEYS, load_checkpoint, save_checkpoint, weights_only_state
from vfnet.errors import CheckpointError, ModelNotFoundError, PlanError, VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.paths import BEST_CHECKPOINT, FINAL_CHECKPOINT
from vfnet.prediction.models import _train_hint, deployment_units
from vfnet.views import VIEWS
from vfnet.zipsafe import extract_member, staging_folder

STAGING_PREFIX = ".vfnet_install_"
# no deployment comes near this (a CCA ensemble of 12 2D units, 4 VFNs and the 3D units is ~1 GiB);
# a manifest that declares more is refused before anything is unpacked
MAX_INSTALL_BYTES = 32 * 2**30
_SHA256 = re.compile(r"[0-9a-f]{64}")

MANIFEST = "vfnet_model.json"
FORMAT = "vfnet_model"
FORMAT_VERSION = 1
DATASET_FILES = ("plans.json", "dataset.json", "fingerprint.json", "splits.json")
UNIT_FILES = (FINAL_CHECKPOINT, BEST_CHECKPOINT, paths.UNIT_RECORD, paths.SUMMARY)
CROSSVAL_FILES = ("best_method.json", "crossval.json", "crossval.md")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unit_complete(unit_dir: Path) -> bool:
    return paths.UnitPaths(unit_dir).final_checkpoint.is_file()


def deployment_unit_list(plan: Plan, results: Path, preset: str, include_all_folds: bool = True
                         ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(required, optional) (network, unit) pairs of a preset's deployment.

    Required: the 2D units that ``vfnet_predict`` ensembles per view (the K fold units in CCA
    mode, or ``all`` when ``include_all_folds`` is False; ``holdout`` in holdout mode) and
    the VFN that fuses them. Optional, exported when trained: the no-image VFN of the same
    unit, next to a fold ensemble the per-view 2D units ``all`` (for ``-f all``), and the 3D
    U-Net baseline's units (for ``vfnet_predict --model 3d``).
    """
    units_2d, vfn_units = deployment_units(plan, None if include_all_folds else ["all"])
    required = [(paths.view_network(view), unit) for unit in units_2d for view in VIEWS] + [("vfn", u) for u in vfn_units]
    optional = [("vfn_noimage", u) for u in vfn_units] + [("vfn", "all")] * ("all" not in vfn_units)
    if "all" not in units_2d:
        alls = [(paths.view_network(view), "all") for view in VIEWS]
        if all(_unit_complete(paths.UnitPaths.of(results, preset, n, u).folder) for n, u in alls):
            optional = alls + optional
    optional += [("3d", unit["name"]) for unit in plan["units"].get("3d", [])]
    return required, optional


def export_model(dataset: str | int | None, output_zip: str | Path, preset: str = "default",
                 include_all_folds: bool = True) -> Path:
    """Zip the self-contained deployment of a trained dataset.

    Args:
        dataset: id, ``TaskXX`` or full name in ``$vfnet_results``.
        output_zip: the zip to write (atomically; an existing file is replaced).
        preset: training preset whose models to export.
        include_all_folds: export the K fold units of each view (the ensemble ``vfnet_predict``
            uses by default); False exports the 2D units ``all`` instead (one network per view).

    Returns:
        The zip's path.

    Raises:
        ModelNotFoundError: a deployment unit is not trained; the message names its command.
    """
    results = paths.results_dataset(dataset)
    name = results.name
    plan = Plan.load(results)
    required, optional = deployment_unit_list(plan, results, preset, include_all_folds)
    missing = [(n, u) for n, u in required if not _unit_complete(paths.UnitPaths.of(results, preset, n, u).folder)]
    if missing:
        hints = "\n".join(f"  {n}/{u}: {_train_hint(name, preset, n, u)}" for n, u in missing)
        raise ModelNotFoundError(f"{len(missing)} deployment unit(s) of {name} ({preset} preset) are not trained "
                                 f"(no {FINAL_CHECKPOINT} under {results / preset}):\n{hints}")
    units = required + [(n, u) for n, u in optional if _unit_complete(paths.UnitPaths.of(results, preset, n, u).folder)]
    files = [results / f for f in DATASET_FILES if (results / f).is_file()]
    for network, unit in units:
        unit_dir = paths.UnitPaths.of(results, preset, network, unit).folder
        # a VFN predicts from the checkpoint that validated best; the other networks from the final one
        files += [unit_dir / f for f in UNIT_FILES if (unit_dir / f).is_file()
                  and (f != BEST_CHECKPOINT or network.startswith(paths.VFN_NETWORK))]
    files += [results / preset / "crossval" / f for f in CROSSVAL_FILES
              if (results / preset / "crossval" / f).is_file()]
    files += sorted((results / preset / "stack").glob("*/stack.json"))  # the stack fusion's weights per fold
    output_zip = Path(output_zip)
    if output_zip.resolve().is_relative_to(results.resolve()):
        raise VfnetError(f"write the zip outside the results folder it exports ({results}), not to {output_zip}")
    output_zip.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vfnet_export_", dir=output_zip.resolve().parent) as stripped:
        relative = {f.relative_to(results).as_posix(): f for f in files}
        relative = {rel: _weights_only_copy(f, Path(stripped) / rel) if f.suffix == ".pth" else f
                    for rel, f in relative.items()}
        _write_zip(output_zip, name, preset, plan, relative, units, results)
    return output_zip


def _weights_only_copy(checkpoint: Path, copy: Path) -> Path:
    """``checkpoint`` itself when it holds weights only, else a copy at ``copy`` without optimizer and random states."""
    state = load_checkpoint(checkpoint)
    if set(state) <= set(WEIGHT_KEYS):
        return checkpoint
    copy.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(weights_only_state(state), copy)


def _write_zip(output_zip: Path, name: str, preset: str, plan: Plan, relative: dict[str, Path],
               units: list[tuple[str, str]], results: Path) -> None:
    best_path = results / preset / "crossval" / "best_method.json"
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "vfnet_version": __version__,
        "dataset": name, "preset": preset, "split_mode": plan["split_mode"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "fusion": read_json(best_path) if best_path.is_file() else None,
        "units": [{"network": n, "unit": u} for n, u in units],
        "files": {rel: {"sha256": _sha256(f), "bytes": f.stat().st_size} for rel, f in relative.items()},
    }
    with atomic_path(output_zip, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for rel, path in relative.items():
                archive.write(path, f"{name}/{rel}")
        try:  # read back: a full disk can leave a zip without its central directory
            with zipfile.ZipFile(tmp) as archive:
                complete = set(archive.namelist()) == {MANIFEST, *(f"{name}/{rel}" for rel in relative)}
        except zipfile.BadZipFile:
            complete = False
        if not complete:
            raise VfnetError(f"{output_zip} came out incomplete (full disk?); free some space and export again")


def _safe_member(name: str) -> PurePosixPath:
    """A zip member name as a relative path, or a VfnetError for absolute and ``..`` paths."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or name.startswith("/") or path.is_absolute() or ":" in path.parts[0]
            or any(part in ("..", "") for part in path.parts)):
        raise VfnetError(f"unsafe path '{name}' in the model zip: refusing to install it")
    return path


def _check_manifest(manifest: dict, zip_path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VfnetError(f"{zip_path} is not a vfnet model (its {MANIFEST} lacks format '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise VfnetError(f"{zip_path} has model format {manifest.get('format_version')}; this vfnet "
                         f"({__version__}) reads format {FORMAT_VERSION}. Install a matching vfnet version.")
    name = manifest.get("dataset")
    if not isinstance(name, str) or paths.parse_task_name(name) is None or "/" in name or ".." in name:
        raise VfnetError(f"{zip_path}: dataset name {name!r} in {MANIFEST} is not TaskXX_Name")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("units"), list):
        raise VfnetError(f"{zip_path}: {MANIFEST} lacks its files or units")
    _check_file_entries(manifest["files"], zip_path)
    try:
        checkpoints = [f"{manifest['preset']}/{u['network']}/{u['unit']}/{FINAL_CHECKPOINT}" for u in manifest["units"]]
    except (KeyError, TypeError) as exc:
        raise VfnetError(f"{zip_path}: {MANIFEST} names its units without preset, network or unit") from exc
    absent = [c for c in checkpoints if c not in manifest["files"]]
    if absent:
        raise VfnetError(f"{zip_path}: {MANIFEST} lists units whose checkpoints it lacks: {', '.join(absent)}")


def _check_file_entries(files: dict, zip_path: Path) -> None:
    """Every file entry is ``{"sha256": 64 hex digits, "bytes": a size}``, and the sizes add up to at most the cap."""
    for rel, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and type(entry.get("bytes")) is int and entry["bytes"] >= 0):
            raise VfnetError(f"{zip_path}: {MANIFEST} entry {rel!r} is malformed (expected a sha256 of 64 hex digits "
                             f"and a size in bytes, got {str(entry)[:80]}); the zip is damaged or not from vfnet")
    total = sum(entry["bytes"] for entry in files.values())
    if total > MAX_INSTALL_BYTES:
        raise VfnetError(f"{zip_path}: {MANIFEST} declares {total / 2**30:.1f} GiB of files, more than the "
                         f"{MAX_INSTALL_BYTES / 2**30:.0f} GiB a vfnet model may hold; refusing to install it")


def read_manifest(zip_path: str | Path) -> dict:
    """The validated manifest of a model zip.

    Raises:
        VfnetError: not a zip, no manifest, or a manifest of another format.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise VfnetError(f"model zip {zip_path} not found")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
    except zipfile.BadZipFile as exc:
        raise VfnetError(f"{zip_path} is not a zip file ({exc})") from exc
    except KeyError as exc:
        raise VfnetError(f"{zip_path} has no {MANIFEST}: not a model written by vfnet_export_model") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VfnetError(f"{zip_path}: {MANIFEST} is not valid JSON ({exc})") from exc
    except (OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise VfnetError(f"{zip_path} cannot be read ({exc})") from exc
    _check_manifest(manifest, zip_path)
    return manifest


def _extract(archive: zipfile.ZipFile, manifest: dict, staging: Path, zip_path: Path) -> list[PurePosixPath]:
    """Unpack the dataset's files into ``staging`` after checking every member; return their relative paths."""
    name = manifest["dataset"]
    expected = {_safe_member(rel) for rel in manifest["files"]}
    members = {}
    for info in archive.infolist():
        member = _safe_member(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise VfnetError(f"{zip_path}: '{info.filename}' is a symbolic link; refusing to install it")
        if info.is_dir() or info.filename == MANIFEST:
            continue
        if member.parts[0] != name or len(member.parts) < 2:
            raise VfnetError(f"{zip_path}: '{info.filename}' lies outside {name}/; refusing to install it")
        members[PurePosixPath(*member.parts[1:])] = info
    unknown, absent = set(members) - expected, expected - set(members)
    if unknown or absent:
        raise VfnetError(f"{zip_path} does not match its {MANIFEST}: unlisted {sorted(map(str, unknown))}, "
                         f"missing {sorted(map(str, absent))}")
    for rel, info in sorted(members.items()):
        declared = manifest["files"][str(rel)]
        if info.file_size != declared["bytes"]:  # the header can lie too: extract_member counts what it writes
            raise VfnetError(f"{zip_path}: {info.filename} is {info.file_size} bytes, not the {declared['bytes']} "
                             f"its {MANIFEST} declares; refusing to install it")
        target = staging.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if extract_member(archive, info, target, declared["bytes"], str(zip_path)) != declared["sha256"]:
            raise VfnetError(f"{zip_path}: {rel} is corrupt (checksum differs from {MANIFEST})")
    return sorted(members)


def _check_checkpoints(files: list[PurePosixPath], staging: Path, zip_path: Path) -> None:
    """Every staged checkpoint loads with ``weights_only=True`` (one that could run code is refused)."""
    for rel in files:
        if rel.suffix == ".pth":
            staged = staging.joinpath(*rel.parts)
            try:
                load_checkpoint(staged)
            except CheckpointError as exc:
                raise VfnetError(f"{zip_path}: {str(exc).replace(str(staged), str(rel))}") from exc


def _check_free_space(manifest: dict, root: Path, zip_path: Path) -> None:
    needed = sum(entry["bytes"] for entry in manifest["files"].values())
    free = shutil.disk_usage(root).free
    if needed > free:
        raise VfnetError(f"installing {zip_path} needs {needed / 2**20:.0f} MiB but {root} has only "
                         f"{free / 2**20:.0f} MiB free; free some space and install again")


def _conflicts(files: list[PurePosixPath], staging: Path, target: Path) -> list[str]:
    """Files the install would replace: every existing checkpoint, and other files whose content differs."""
    out = []
    for rel in files:
        existing = target.joinpath(*rel.parts)
        if existing.is_file() and (rel.suffix == ".pth" or _sha256(existing) != _sha256(staging.joinpath(*rel.parts))):
            out.append(str(existing))
    return out


def _move_into_place(files: list[PurePosixPath], staging: Path, target: Path, backup: Path) -> None:
    """Rename each staged file onto its target; on any failure put every replaced file back."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for rel in files:
            source, dest = staging.joinpath(*rel.parts), target.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            saved = None
            if dest.exists():
                saved = backup.joinpath(*rel.parts)
                saved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, saved)
            done.append((dest, saved))
            os.replace(source, dest)
    except BaseException:
        for dest, saved in reversed(done):
            if saved is not None:
                os.replace(saved, dest)
            elif dest.exists():
                dest.unlink()
        raise


def install_model(zip_path: str | Path, overwrite: bool = False) -> Path:
    """Install a zip written by :func:`export_model` into ``$vfnet_results/<TaskXX_Name>/``.

    Every member is checked (no absolute or ``..`` paths, no links, nothing the manifest does
    not list, sizes counted while unpacking and capped by the manifest, checksums, checkpoints
    loadable with ``weights_only=True``) and unpacked into a staging folder beside the results
    before anything is moved into place, so a bad zip leaves nothing behind; staging folders
    of killed installs are removed by the next one.

    Args:
        zip_path: the model zip.
        overwrite: replace existing checkpoints and differing files (plans.json...) of that dataset.

    Returns:
        The dataset's results folder.

    Raises:
        VfnetError: unsafe or corrupt zip, or files that would be replaced without ``overwrite``.
    """
    zip_path = Path(zip_path)
    manifest = read_manifest(zip_path)
    root = paths.results_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / manifest["dataset"]
    _check_free_space(manifest, root, zip_path)
    # staging inside the results root: same file system, so the final renames are atomic
    with staging_folder(root, STAGING_PREFIX) as staging_root:
        staging = staging_root / "files"
        with zipfile.ZipFile(zip_path) as archive:
            files = _extract(archive, manifest, staging, zip_path)
        _check_checkpoints(files, staging, zip_path)
        plans = staging / "plans.json"
        if not plans.is_file():
            raise VfnetError(f"{zip_path} holds no plans.json for {manifest['dataset']}")
        try:
            Plan(read_json(plans))
        except PlanError as exc:
            raise VfnetError(f"{zip_path}: {exc}") from exc
        if not overwrite:
            conflicts = _conflicts(files, staging, target)
            if conflicts:
                listing = "\n".join(f"  {c}" for c in conflicts[:20])
                more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
                raise VfnetError(f"installing {zip_path} would replace {len(conflicts)} existing file(s) of "
                                 f"{target}:\n{listing}{more}\nPass --overwrite to replace them.")
        if not target.exists():
            os.replace(staging, target)
        else:
            _move_into_place(files, staging, target, staging_root / "replaced")
    return target
