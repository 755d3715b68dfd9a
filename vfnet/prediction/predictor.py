"""An in-memory predictor: load a trained dataset's models once, then segment arrays, images or files.

Like nnU-Net's ``nnUNetPredictor``: the models are loaded in the constructor and every call
reuses them. Inputs may be SimpleITK images (one per channel), numpy arrays with their
spacing, origin and direction, or files; labels come back in the input's own geometry.

Example:
    >>> predictor = VfnetPredictor("Task04", preset="quick", device="cpu")
    >>> labels = predictor.predict_image(sitk.ReadImage("case_0000.nii.gz"))  # a SimpleITK label image
    >>> array = predictor.predict_array(volume, spacing=(1.0, 1.0, 1.0))      # volume (z, y, x) as SimpleITK orders it
    >>> report = predictor.predict_files("images/", "labels/")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfnet.errors import VfnetError
from vfnet.imageio import from_canonical, geometry_of, to_canonical
from vfnet.prediction.models import load_3d_models, load_deployed_models
from vfnet.prediction.predict import PredictionReport, predict, segment_canonical


class VfnetPredictor:
    """The models of one trained dataset, loaded once.

    Args:
        dataset: id or name of a trained (or installed) dataset; None: the only one.
        preset: the training preset whose models to use (None: the dataset's only trained one).
        folds: fold units to ensemble (default: all K folds, or holdout).
        fusion: fusion method (default: the one crossval recorded); ignored with ``model="3d"``.
        postprocess: keep the largest component per label (default: as crossval recorded).
        tta: test-time mirroring (see ``vfnet_predict --tta``).
        device: auto, cpu or cuda.
        model: ``vfnet`` (views + fusion) or ``3d`` (the 3D U-Net baseline).
    """

    def __init__(self, dataset: str | int | None = None, preset: str | None = None, folds: list[str] | None = None,
                 fusion: str | None = None, postprocess: bool | None = None, tta: bool = False, device: str = "auto",
                 model: str = "vfnet"):
        self.dataset, self.preset, self.folds, self.tta, self.device, self.model = (
            dataset, preset, folds, tta, device, model)
        if model == "3d":
            self.models = load_3d_models(dataset, preset, folds, device)
            self.fusion, self.postprocess = "3d", bool(postprocess)
        elif model == "vfnet":
            self.models = load_deployed_models(dataset, preset, folds, fusion, device)
            self.fusion = self.models.fusion_method
            self.postprocess = self.models.default_postprocess if postprocess is None else postprocess
        else:
            raise VfnetError(f"model '{model}' unknown; expected vfnet or 3d")

    def predict_image(self, image: sitk.Image | Sequence[sitk.Image]) -> sitk.Image:
        """The label image of one case (one SimpleITK image per channel), in that image's geometry."""
        images = [image] if isinstance(image, sitk.Image) else list(image)
        if not images:
            raise VfnetError("predict_image needs at least one image")
        channels, spacing = [], None
        for channel in images:
            if channel.GetDimension() != 3 or channel.GetNumberOfComponentsPerPixel() != 1:
                raise VfnetError(f"expected 3D images with one value per voxel, got {channel.GetDimension()}D with "
                                 f"{channel.GetNumberOfComponentsPerPixel()} component(s)")
            array, spacing_ = to_canonical(channel)
            channels.append(array)
            spacing = spacing or spacing_
        labels, _ = segment_canonical(channels, spacing, self.models, self.fusion, self.postprocess, self.tta)
        return from_canonical(labels, geometry_of(images[0]))

    def predict_array(self, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0),
                      direction: Sequence[float] | None = None) -> np.ndarray:
        """Labels of an array (z, y, x), or (channels, z, y, x), in SimpleITK's index order.

        ``spacing``, ``origin`` and ``direction`` are given as SimpleITK gives them (x, y, z); the
        default direction is the identity. The labels have the array's own (z, y, x) shape.
        """
        array = np.asarray(array)
        stacks = [array] if array.ndim == 3 else list(array)
        images = []
        for stack in stacks:
            image = sitk.GetImageFromArray(np.ascontiguousarray(stack, dtype=np.float32))
            image.SetSpacing([float(s) for s in spacing])
            image.SetOrigin([float(o) for o in origin])
            if direction is not None:
                image.SetDirection([float(d) for d in direction])
            images.append(image)
        return sitk.GetArrayFromImage(self.predict_image(images))

    def predict_files(self, source: str | Path, target: str | Path, overwrite: bool = False,
                      quiet: bool = True) -> PredictionReport:
        """``vfnet_predict`` on a file or folder (loads the models again: use it for folders, not loops)."""
        return predict(Path(source), Path(target), self.dataset, self.preset, self.folds,
                       None if self.model == "3d" else self.fusion, self.postprocess, self.tta, overwrite=overwrite,
                       device=self.device, quiet=quiet, model=self.model)
