"""vfnet_predict as a library call: new images → label files in each input's own geometry.

Per case: read and reorient to LPS, preprocess as planned, run the three views (the chosen
fold units' probabilities averaged, optionally with mirroring), fuse, undo the resampling
and the reorientation, write ``<case>.nii.gz``. ``model="3d"`` runs the 3D U-Net baseline's
fold ensemble instead of the views and the fusion. Each case is independent: one that fails is
reported and the others still finish.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vfnet.atomic import remove_stale_temporaries
from vfnet.dicom import series_note
from vfnet.errors import ImageWriteError, VfnetError, disk_full_message
from vfnet.imageio import IMAGE_SUFFIXES, Geometry, nifti_raw_check, read_canonical, write_like, written_image_problem
from vfnet.inference.inputs import InputCase, discover_cases
from vfnet.inference.predict3d import window_stride
from vfnet.inference.probabilities import probabilities_in_input_grid, probability_properties
from vfnet.inference.probabilities import save_probabilities as save_probabilities_file
from vfnet.prediction.models import DeployedModels, UNet3DModels, load_3d_models, load_deployed_models
from vfnet.preprocessing.preprocessing import (
    class_values,
    coarse_axis,
    plan_resampling,
    preprocess_image,
    resample_to_shape,
)

MODELS = ("vfnet", "3d")
LOG_NAME = "vfnet_predict.jsonl"  # one JSON object per line: the settings, then one line per case


@dataclass
class PredictionReport:
    """What happened to every case."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # e.g. which DICOM series of a folder was used


def _check_folders(source: Path, target: Path) -> None:
    source, target = source.resolve(), target.resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise VfnetError(f"output folder {target} is inside the input folder {source}; vfnet never writes "
                         "into its input: choose another -o")
    if target == source:
        raise VfnetError(f"output {target} is the input itself; choose another -o")
    if source.is_file() and target == source.parent:
        raise VfnetError(f"output folder {target} is the input file's own folder; vfnet never writes beside its "
                         "input: choose another -o")
    if target.exists() and not target.is_dir():
        raise VfnetError(f"output {target} is an existing file; -o names the folder the labels go to (or, for "
                         "one input file, the label file: -o seg.nii.gz)")


def labels_to_input_geometry(classes: np.ndarray, properties: dict, num_classes: int,
                             coarse: int | None = None) -> np.ndarray:
    """Class labels in the preprocessed grid → label values in the canonical (reoriented) grid.

    Resampling goes through per-class soft masks (linear) and an argmax, which keeps thin
    structures better than nearest-neighbour on the labels; along a ``coarse`` axis (see
    :func:`vfnet.preprocessing.preprocessing.coarse_axis`) it takes the nearest slice.
    """
    shape = tuple(properties["canonical_shape"])
    if classes.shape != shape:
        onehot = np.stack([(classes == c).astype(np.float32) for c in range(num_classes)])
        classes = np.argmax(resample_to_shape(onehot, shape, order=1, coarse=coarse), axis=0)
    return class_values(properties["labels"])[classes]


def prepare_channels(channels: list[np.ndarray], spacing, plan, name: str = "image") -> np.ndarray:
    """The preprocessed image (C, z, y, x) of LPS-oriented channel arrays, after checking them.

    Raises:
        VfnetError: wrong channel count, channels of different shapes, or NaN / infinite voxels.
    """
    if len(channels) != plan.num_channels:
        raise VfnetError(f"{name} has {len(channels)} channel(s); the model expects {plan.num_channels}")
    for array in channels:
        if array.shape != channels[0].shape:
            raise VfnetError(f"{name}: channel shape {array.shape} differs from the first channel's {channels[0].shape}")
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise VfnetError(f"{name}: the image holds {bad} NaN or infinite voxel(s); fix or re-export it")
    return preprocess_image(channels, spacing, plan.data)


def segment_preprocessed(image: np.ndarray, models: DeployedModels | UNet3DModels, fusion: str,
                         postprocess: bool | tuple[int, ...], tta: bool,
                         probabilities: bool = False) -> tuple[np.ndarray, dict]:
    """(class labels (z, y, x) in the preprocessed grid, the maps behind them) of a preprocessed image.

    With ``probabilities`` the maps hold ``"fused"``: the class probabilities the labels come from
    (before post-processing).
    """
    if isinstance(models, UNet3DModels):
        probs = models.probabilities(image, tta=tta)
        return models.segment(probs, postprocess), {"3d": probs, "fused": probs}
    return models.segment(fusion, image, tta=tta, postprocess=postprocess, probabilities=probabilities)


def segment_canonical(channels: list[np.ndarray], spacing, models: DeployedModels | UNet3DModels, fusion: str,
                      postprocess: bool | tuple[int, ...], tta: bool, name: str = "image") -> tuple[np.ndarray, dict]:
    """Label values (z, y, x) in the canonical grid of LPS-oriented channel arrays, and the maps behind them.

    The one segmentation path of ``vfnet_predict`` and :class:`vfnet.prediction.predictor.VfnetPredictor`.

    Raises:
        VfnetError: wrong channel count, channels of different shapes, or NaN / infinite voxels.
    """
    plan = models.plan
    image = prepare_channels(channels, spacing, plan, name)
    classes, saved = segment_preprocessed(image, models, fusion, postprocess, tta)
    return _labels_in_canonical_grid(classes, channels[0].shape, spacing, plan), saved


def back_to_input_axis(spacing, plan) -> int | None:
    """The coarse axis (or None) of going from the plan's grid back to an input of ``spacing``."""
    return coarse_axis(spacing, plan["target_spacing"], plan_resampling(plan))


def _labels_in_canonical_grid(classes: np.ndarray, canonical_shape, spacing, plan) -> np.ndarray:
    properties = {"canonical_shape": list(canonical_shape), "labels": plan["labels"]}
    labels = labels_to_input_geometry(classes, properties, plan.num_classes, back_to_input_axis(spacing, plan))
    return labels.astype(np.uint8 if labels.max() < 256 else np.uint16)


def read_case(case: InputCase, plan, series: str | None = None
              ) -> tuple[list[np.ndarray], tuple[float, float, float], Geometry]:
    """(LPS channel arrays, spacing, the first channel's file geometry) of one input case.

    ``series`` picks the DICOM series of a case folder holding several (see :mod:`vfnet.dicom`).

    Raises:
        VfnetError: wrong channel count, NaN or infinite voxels in the file, channels of different shapes.
    """
    if len(case.sources) != plan.num_channels:
        raise VfnetError(f"case {case.case_id} has {len(case.sources)} channel(s) "
                         f"({', '.join(p.name for p in case.sources)}); the model expects {plan.num_channels}")
    channels, spacing, geometry = [], None, None
    for source in case.sources:
        array, channel_spacing, channel_geometry = read_canonical(source, series if Path(source).is_dir() else None)
        # ITK reads NaN and Inf in NIfTI as 0: count them in the file itself
        bad = nifti_raw_check(source) if Path(source).is_file() else 0
        if bad:
            raise VfnetError(f"{source}: the image holds {bad} NaN or infinite voxel(s); fix or re-export it")
        if geometry is not None and array.shape != channels[0].shape:
            raise VfnetError(f"{source}: shape {array.shape} differs from the case's first channel {channels[0].shape}")
        channels.append(array)
        spacing, geometry = spacing or channel_spacing, geometry or channel_geometry
    return channels, spacing, geometry


@dataclass
class _PreparedCase:
    image: np.ndarray  # preprocessed (C, z, y, x)
    canonical_shape: tuple[int, ...]
    spacing: tuple[float, float, float]  # canonical (z, y, x) spacing of the input
    geometry: Geometry


def _prepare_case(case: InputCase, plan, series: str | None = None) -> _PreparedCase:
    channels, spacing, geometry = read_case(case, plan, series)
    return _PreparedCase(prepare_channels(channels, spacing, plan, str(case.sources[0])), channels[0].shape, spacing,
                         geometry)


def _write_case(case: InputCase, classes: np.ndarray, maps: dict, prepared: _PreparedCase, plan, out_dir: Path,
                save_probabilities: bool) -> None:
    write_like(_labels_in_canonical_grid(classes, prepared.canonical_shape, prepared.spacing, plan), prepared.geometry,
               out_dir / case.output_name)
    if save_probabilities:
        probabilities = probabilities_in_input_grid(maps["fused"], prepared.canonical_shape, prepared.geometry,
                                                    back_to_input_axis(prepared.spacing, plan))
        save_probabilities_file(out_dir, case.case_id, probabilities,
                                probability_properties(prepared.geometry, plan["labels"]))


def predict_case(case: InputCase, models: DeployedModels | UNet3DModels, fusion: str,
                 postprocess: bool | tuple[int, ...], tta: bool, out_dir: Path,
                 save_probabilities: bool = False, series: str | None = None) -> None:
    """Predict one case and write ``out_dir/<case>.nii.gz`` (atomically).

    With ``save_probabilities`` also ``<case>.npz`` and ``<case>.json``: the fused probabilities in
    the input's voxel grid and their properties (:mod:`vfnet.inference.probabilities`). With
    :class:`UNet3DModels` the 3D U-Net ensemble segments the case and ``fusion`` is ignored.
    """
    prepared = _prepare_case(case, models.plan, series)
    classes, maps = segment_preprocessed(prepared.image, models, fusion, postprocess, tta, save_probabilities)
    _write_case(case, classes, maps, prepared, models.plan, out_dir, save_probabilities)


def _case_error(case: InputCase, exc: Exception) -> str | None:
    """The one-line reason a case failed, or None for errors that are not the case's own."""
    if isinstance(exc, VfnetError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"{case.sources[0]}: out of memory for this case"
    if isinstance(exc, (RuntimeError, ValueError, OSError)):
        return f"{case.sources[0]}: {type(exc).__name__}: {exc}"
    return None


def _output_done(path: Path) -> bool:
    # an existing output counts as done only when it reads back whole (a full disk leaves empty files)
    return path.exists() and written_image_problem(path) is None


def predict(source: Path, target: Path, dataset: str | int | None = None, preset: str | None = None,
            folds: list[str] | None = None, fusion: str | None = None, postprocess: bool | None = None,
            tta: bool = False, save_probabilities: bool = False, overwrite: bool = False,
            device: str = "auto", quiet: bool = False, model: str = "vfnet", checkpoint: str | None = None,
            step_size: float | None = None, num_processes_preprocessing: int = 2,
            num_processes_export: int = 2, series: str | None = None,
            case_ids: list[str] | None = None) -> PredictionReport:
    """Predict every case of ``source`` (a file, a folder of files, or DICOM series folders) into ``target``.

    ``model="vfnet"`` runs the views and the fusion; ``model="3d"`` the 3D U-Net baseline's fold
    ensemble (``folds`` then names 3D units; ``fusion`` does not apply; no post-processing
    unless asked for). A single input file with ``target`` ending in an image suffix
    (``seg.nii.gz``) writes that file; otherwise ``target`` is a folder.

    Args:
        preset: training preset (None: the dataset's only trained one).
        postprocess: None: the per-label choice of vfnet_crossval; True: every label; False: none.
        checkpoint: ``final`` or ``best`` for every network (None: views final, VFN best, as crossval scored).
        step_size: sliding-window step of the VFN / 3D U-Net windows as a fraction of the patch
            (None: the planned strides, half a patch).
        num_processes_preprocessing: threads reading and preprocessing the next cases while the
            networks run (that many cases are held ahead in memory).
        num_processes_export: threads resampling and writing finished cases.
        series: the DICOM series of case folders holding several; without it the series with the
            most slices is used and the report's ``notes`` say so.
        case_ids: predict only those cases of ``source`` (a shard of a larger job,
            :mod:`vfnet.pipeline.distributed_predict`).

    Raises:
        VfnetError: before any case runs (bad folders, missing models). Per-case problems are
            collected in the report instead.
    """
    source, target = Path(source), Path(target)
    single_file = source.is_file() and target.name.lower().endswith(IMAGE_SUFFIXES)
    out_dir = target.parent if single_file else target
    _check_folders(source, out_dir if single_file else target)
    cases = discover_cases(source)
    if case_ids is not None:
        wanted = set(case_ids)
        cases = [case for case in cases if case.case_id in wanted]
    if single_file:
        cases[0].output = target.name
    if model not in MODELS:
        raise VfnetError(f"model '{model}' unknown; expected one of {', '.join(MODELS)}")
    if model == "3d":
        if fusion:
            raise VfnetError("--fusion applies to --model vfnet only; the 3D U-Net needs no fusion")
        models = load_3d_models(dataset, preset, folds, device, checkpoint)
        fusion, postprocess = "3d", bool(postprocess)
        models.step_size = step_size
        if step_size is not None:
            window_stride(models.plan.unet3d.patch_size, step_size)  # checks the step size
    else:
        models = load_deployed_models(dataset, preset, folds, fusion, device, checkpoint)
        fusion = models.fusion_method
        postprocess = models.default_postprocess if postprocess is None else postprocess
        models.step_size = step_size
        models.vfn_config()  # checks the step size
    models.quiet = quiet
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # left by a killed run
    report = PredictionReport()
    log_path = out_dir / LOG_NAME

    def log(entry: dict) -> None:  # one line per case as it finishes: a killed run keeps what it did
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    log({"model": model, "fusion": fusion, "postprocess": postprocess, "tta": tta, "folds": models.folds,
         "fusion_units": getattr(models, "fusion_units", None), "preset": preset, "device": str(models.device),
         "checkpoint": checkpoint, "step_size": step_size})
    todo = []
    for case in cases:
        if _output_done(out_dir / case.output_name) and not overwrite:
            report.skipped.append(case.case_id)
        else:
            todo.append(case)
    plan = models.plan
    with ThreadPoolExecutor(max(1, num_processes_preprocessing)) as readers, \
            ThreadPoolExecutor(max(1, num_processes_export)) as writers:
        ahead = max(1, num_processes_preprocessing)
        reading = {i: readers.submit(_prepare_case, case, plan, series) for i, case in enumerate(todo[:ahead])}
        writing: list[tuple[InputCase, float, Future]] = []

        def finish(block: bool) -> None:
            for entry in [w for w in writing if block or w[2].done()]:
                case, seconds, future = entry
                writing.remove(entry)
                try:
                    future.result()
                except Exception as exc:  # the case's own errors are reported, others re-raised
                    stop = _output_failure(exc, out_dir, report)
                    if stop is not None:  # a full disk: every later case would fail the same way
                        report.failed[case.case_id] = str(stop)
                        log({"case": case.case_id, "seconds": None, "error": str(stop)})
                        raise stop from None
                    reason = _case_error(case, exc)
                    if reason is None:
                        raise
                    report.failed[case.case_id] = reason
                else:
                    report.written.append(case.case_id)
                    report.seconds[case.case_id] = round(time.perf_counter() - seconds, 3)
                log({"case": case.case_id, "seconds": report.seconds.get(case.case_id),
                     "error": report.failed.get(case.case_id),
                     **({"note": report.notes[case.case_id]} if case.case_id in report.notes else {})})

        for index, case in enumerate(tqdm(todo, desc="predicting", unit="case", disable=True if quiet else None)):
            if index + ahead < len(todo):
                reading[index + ahead] = readers.submit(_prepare_case, todo[index + ahead], plan, series)
            start = time.perf_counter()
            note = dicom_series_note(case, series)
            if note:
                report.notes[case.case_id] = note
            try:
                prepared = reading.pop(index).result()
                classes, maps = segment_preprocessed(prepared.image, models, fusion, postprocess, tta,
                                                     save_probabilities)
            except Exception as exc:
                reason = _case_error(case, exc)
                if reason is None:
                    raise
                report.failed[case.case_id] = reason
                log({"case": case.case_id, "seconds": None, "error": reason})
                continue
            writing.append((case, start, writers.submit(_write_case, case, classes, maps, prepared, plan, out_dir,
                                                        save_probabilities)))
            finish(block=False)
        finish(block=True)
    return report


def dicom_series_note(case: InputCase, series: str | None) -> str | None:
    """Which series a DICOM case folder holding several gives (None for files and single series)."""
    folder = Path(case.sources[0])
    return series_note(folder, series) if folder.is_dir() else None


def _output_failure(exc: BaseException, target: Path, report: PredictionReport) -> VfnetError | None:
    """A write failure every later case would hit too (full disk, file-size limit) as the error that stops the
    batch; None for any other error, which the caller treats as the case's own."""
    if isinstance(exc, ImageWriteError):
        reason = str(exc)
    elif isinstance(exc, OSError):
        reason = disk_full_message(exc)
        if reason is None:
            return None
    else:
        return None
    return VfnetError(f"{reason}; stopped after writing {len(report.written)} case(s) to {target} (they are kept, "
                      "nothing partial is), free some space and rerun to predict the rest")
