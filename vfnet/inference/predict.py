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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vfnet.atomic import atomic_path
from vfnet.errors import VfnetError
from vfnet.imageio import nifti_raw_check, read_canonical, write_like, written_image_problem
from vfnet.inference.inputs import InputCase, discover_cases
from vfnet.inference.models import DeployedModels, UNet3DModels, load_3d_models, load_deployed_models
from vfnet.preprocessing import class_values, preprocess_image, resample_to_shape

MODELS = ("vfnet", "3d")


@dataclass
class PredictionReport:
    """What happened to every case."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _check_folders(source: Path, target: Path) -> None:
    source, target = source.resolve(), target.resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise VfnetError(f"output folder {target} is inside the input folder {source}; vfnet never writes "
                         "into its input: choose another -o")
    if target == source:
        raise VfnetError(f"output {target} is the input itself; choose another -o")
    if target.exists() and not target.is_dir():
        raise VfnetError(f"output {target} is an existing file; -o names the folder the labels go to")


def labels_to_input_geometry(classes: np.ndarray, properties: dict, num_classes: int) -> np.ndarray:
    """Class labels in the preprocessed grid → label values in the canonical (reoriented) grid.

    Resampling goes through per-class soft masks (linear) and an argmax, which keeps thin
    structures better than nearest-neighbour on the labels.
    """
    shape = tuple(properties["canonical_shape"])
    if classes.shape != shape:
        onehot = np.stack([(classes == c).astype(np.float32) for c in range(num_classes)])
        classes = np.argmax(resample_to_shape(onehot, shape, order=1), axis=0)
    return class_values(properties["labels"])[classes]


def segment_canonical(channels: list[np.ndarray], spacing, models: DeployedModels | UNet3DModels, fusion: str,
                      postprocess: bool, tta: bool, name: str = "image") -> tuple[np.ndarray, dict]:
    """Label values (z, y, x) in the canonical grid of LPS-oriented channel arrays, and the maps behind them.

    The one segmentation path of ``vfnet_predict`` and :class:`vfnet.inference.predictor.VfnetPredictor`.

    Raises:
        VfnetError: wrong channel count, channels of different shapes, or NaN / infinite voxels.
    """
    plan = models.plan
    if len(channels) != plan.num_channels:
        raise VfnetError(f"{name} has {len(channels)} channel(s); the model expects {plan.num_channels}")
    for array in channels:
        if array.shape != channels[0].shape:
            raise VfnetError(f"{name}: channel shape {array.shape} differs from the first channel's {channels[0].shape}")
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise VfnetError(f"{name}: the image holds {bad} NaN or infinite voxel(s); fix or re-export it")
    image = preprocess_image(channels, spacing, plan.data)
    if isinstance(models, UNet3DModels):
        probabilities = models.probabilities(image, tta=tta)
        classes = models.segment(probabilities, postprocess)
        saved = {"3d": probabilities}
    else:
        classes, saved = models.segment(fusion, image, tta=tta, postprocess=postprocess)
    properties = {"canonical_shape": list(channels[0].shape), "labels": plan["labels"]}
    labels = labels_to_input_geometry(classes, properties, plan.num_classes)
    return labels.astype(np.uint8 if labels.max() < 256 else np.uint16), saved


def predict_case(case: InputCase, models: DeployedModels | UNet3DModels, fusion: str, postprocess: bool, tta: bool,
                 out_dir: Path, save_probabilities: bool = False) -> None:
    """Predict one case and write ``out_dir/<case>.nii.gz`` (atomically).

    With :class:`UNet3DModels` the 3D U-Net ensemble segments the case and ``fusion`` is ignored.
    """
    plan = models.plan
    if len(case.sources) != plan.num_channels:
        raise VfnetError(f"case {case.case_id} has {len(case.sources)} channel(s) "
                         f"({', '.join(p.name for p in case.sources)}); the model expects {plan.num_channels}")
    channels, spacing, geometry = [], None, None
    for source in case.sources:
        array, channel_spacing, channel_geometry = read_canonical(source)
        # ITK reads NaN and Inf in NIfTI as 0: count them in the file itself
        bad = nifti_raw_check(source) if Path(source).is_file() else 0
        if bad:
            raise VfnetError(f"{source}: the image holds {bad} NaN or infinite voxel(s); fix or re-export it")
        if geometry is not None and array.shape != channels[0].shape:
            raise VfnetError(f"{source}: shape {array.shape} differs from the case's first channel {channels[0].shape}")
        channels.append(array)
        spacing, geometry = spacing or channel_spacing, geometry or channel_geometry
    labels, saved = segment_canonical(channels, spacing, models, fusion, postprocess, tta, str(case.sources[0]))
    write_like(labels, geometry, out_dir / case.output_name)
    if save_probabilities:
        with atomic_path(out_dir / f"{case.case_id}.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, **{v: p.astype(np.float16) for v, p in saved.items()},
                                spacing=np.asarray(plan["target_spacing"]))


def predict(source: Path, target: Path, dataset: str | int | None = None, preset: str = "default",
            folds: list[str] | None = None, fusion: str | None = None, postprocess: bool | None = None,
            tta: bool = False, save_probabilities: bool = False, overwrite: bool = False,
            device: str = "auto", quiet: bool = False, model: str = "vfnet", *,
            case_ids: list[str] | None = None) -> PredictionReport:
    """Predict every case of ``source`` (a file, a folder of files, or DICOM series folders) into ``target``.

    ``model="vfnet"`` runs the views and the fusion; ``model="3d"`` the 3D U-Net baseline's fold
    ensemble (``folds`` then names 3D units; ``fusion`` does not apply; no post-processing
    unless asked for). ``case_ids`` predicts only those cases of ``source`` (a shard of a larger job,
    :mod:`vfnet.pipeline.distributed_predict`).

    Raises:
        VfnetError: before any case runs (bad folders, missing models). Per-case problems are
            collected in the report instead.
    """
    source, target = Path(source), Path(target)
    _check_folders(source, target)
    cases = discover_cases(source)
    if case_ids is not None:
        cases = [case for case in cases if case.case_id in set(case_ids)]
    if model not in MODELS:
        raise VfnetError(f"model '{model}' unknown; expected one of {', '.join(MODELS)}")
    if model == "3d":
        if fusion:
            raise VfnetError("--fusion applies to --model vfnet only; the 3D U-Net needs no fusion")
        models = load_3d_models(dataset, preset, folds, device)
        fusion, postprocess = "3d", bool(postprocess)
    else:
        models = load_deployed_models(dataset, preset, folds, fusion, device)
        fusion = models.fusion_method
        postprocess = models.default_postprocess if postprocess is None else postprocess
    target.mkdir(parents=True, exist_ok=True)
    report = PredictionReport()
    log_path = target / "vfnet_predict.log"

    def log(entry: dict) -> None:  # one line per case as it finishes: a killed run keeps what it did
        with open(log_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    log({"model": model, "fusion": fusion, "postprocess": postprocess, "tta": tta, "folds": models.folds,
         "fusion_units": getattr(models, "fusion_units", None), "preset": preset, "device": str(models.device)})
    for case in tqdm(cases, desc="predicting", unit="case", disable=quiet):
        # an existing output counts as done only when it reads back whole (a full disk leaves empty files)
        if (target / case.output_name).exists() and not overwrite \
                and written_image_problem(target / case.output_name) is None:
            report.skipped.append(case.case_id)
            continue
        start = time.perf_counter()
        try:
            predict_case(case, models, fusion, postprocess, tta, target, save_probabilities)
        except VfnetError as exc:
            report.failed[case.case_id] = str(exc)
        except MemoryError:
            report.failed[case.case_id] = f"{case.sources[0]}: out of memory for this case"
        except (RuntimeError, ValueError, OSError) as exc:
            report.failed[case.case_id] = f"{case.sources[0]}: {type(exc).__name__}: {exc}"
        else:
            report.written.append(case.case_id)
            report.seconds[case.case_id] = round(time.perf_counter() - start, 3)
        log({"case": case.case_id, "seconds": report.seconds.get(case.case_id), "error": report.failed.get(case.case_id)})
    return report


