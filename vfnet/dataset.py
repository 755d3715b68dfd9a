"""Raw dataset conventions: dataset.json (nnU-Net v2 and MSD keys) and the files of each case."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vfnet.errors import VfnetError


@dataclass
class DatasetInfo:
    """What dataset.json says, in one normalized form whichever key style it used.

    Attributes:
        channel_names: channel index → modality name ("CT", "MRI", ...).
        labels: label name → integer value, background included.
        file_ending: e.g. ".nii.gz".
        num_training: number of training cases declared.
    """

    name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str = ".nii.gz"
    num_training: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {name: value for name, value in self.labels.items() if value != 0}

    @property
    def num_classes(self) -> int:
        """Background + foreground classes."""
        return len(self.foreground_labels) + 1

    def to_json(self) -> dict:
        """nnU-Net v2 keys."""
        return {
            "name": self.name,
            "channel_names": {str(k): v for k, v in sorted(self.channel_names.items())},
            "labels": dict(sorted(self.labels.items(), key=lambda kv: kv[1])),
            "numTraining": self.num_training,
            "file_ending": self.file_ending,
            **self.extra,
        }


def parse_dataset_json(data: dict, source: str = "dataset.json") -> DatasetInfo:
    """Normalize a dataset.json dict in nnU-Net v2 or MSD key style.

    Raises:
        VfnetError: keys are missing or malformed; the message names ``source`` and the key.
    """
    if not isinstance(data, dict):
        raise VfnetError(f"{source}: expected a JSON object, found {type(data).__name__}")
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise VfnetError(f"{source}: missing key 'channel_names' (or MSD 'modality'), e.g. {{\"0\": \"CT\"}}")
    labels_raw = data.get("labels")
    if not isinstance(labels_raw, dict) or not labels_raw:
        raise VfnetError(f"{source}: missing key 'labels', e.g. {{\"background\": 0, \"organ\": 1}}")
    try:
        channel_names = {int(k): str(v) for k, v in channels.items()}
    except ValueError:
        raise VfnetError(f"{source}: 'channel_names' keys must be channel indices 0, 1, ...") from None
    labels: dict[str, int] = {}
    for key, value in labels_raw.items():
        if isinstance(value, list):
            raise VfnetError(f"{source}: region-based labels ({key}: {value}) are not supported")
        if str(key).lstrip("-").isdigit() and not str(value).lstrip("-").isdigit():
            labels[str(value)] = int(key)  # MSD: value → name
        else:
            try:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)  # int() would quietly truncate 1.7 to 1
                labels[str(key)] = int(value)  # v2: name → value
            except (TypeError, ValueError):
                raise VfnetError(f"{source}: label '{key}' has non-integer value {value!r}") from None
    if 0 not in labels.values():
        raise VfnetError(f"{source}: 'labels' must declare background as 0")
    num_training = data.get("numTraining", len(data.get("training", [])))
    if isinstance(num_training, bool) or not (isinstance(num_training, int)
                                              or (isinstance(num_training, float) and num_training.is_integer())):
        raise VfnetError(f"{source}: 'numTraining' must be a whole number, got {num_training!r}")
    known = {"name", "channel_names", "modality", "labels", "numTraining", "file_ending", "training", "test"}
    return DatasetInfo(
        name=str(data.get("name", "")),
        channel_names=channel_names,
        labels=labels,
        file_ending=str(data.get("file_ending", ".nii.gz")),
        num_training=int(num_training),
        extra={k: v for k, v in data.items() if k not in known and k not in ("numTest", "tensorImageSize")},
    )


def read_dataset_json(path: Path, missing_hint: str = "every dataset folder needs a dataset.json (see README)"):
    """The raw JSON of a dataset.json, with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise VfnetError(f"{path}: missing; {missing_hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise VfnetError(f"{path}: not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise VfnetError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def load_dataset_json(folder: Path) -> DatasetInfo:
    """Read and normalize ``folder/dataset.json``."""
    path = Path(folder) / "dataset.json"
    return parse_dataset_json(read_dataset_json(path), str(path))


@dataclass
class CaseFiles:
    """The files of one case: image channels in channel order, and the label (or None)."""

    case_id: str
    images: list[Path]
    label: Path | None


def _split_channel(stem: str) -> tuple[str, int] | None:
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
        return stem[:-5], int(stem[-4:])
    return None


def list_cases(folder: Path, file_ending: str, images_dir: str = "imagesTr",
               labels_dir: str | None = "labelsTr") -> tuple[dict[str, dict[int, Path]], dict[str, Path], list[Path]]:
    """Group the files of a raw folder by case.

    Returns:
        (images: case → channel → path, labels: case → path, stray files that fit no pattern)
    """
    images: dict[str, dict[int, Path]] = {}
    stray: list[Path] = []
    image_folder = Path(folder) / images_dir
    if image_folder.is_dir():
        for path in sorted(image_folder.iterdir()):
            if path.name.startswith("."):
                continue
            if not path.name.endswith(file_ending):
                stray.append(path)
                continue
            parsed = _split_channel(path.name[: -len(file_ending)])
            if parsed is None:
                stray.append(path)
                continue
            images.setdefault(parsed[0], {})[parsed[1]] = path
    labels: dict[str, Path] = {}
    label_folder = Path(folder) / labels_dir if labels_dir else None
    if label_folder is not None and label_folder.is_dir():
        for path in sorted(label_folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.name.endswith(file_ending):
                labels[path.name[: -len(file_ending)]] = path
            else:
                stray.append(path)
    return images, labels, stray


def training_cases(folder: Path, info: DatasetInfo) -> list[CaseFiles]:
    """Complete training cases (all channels and a label), sorted by id. Use the integrity
    check to learn about incomplete ones."""
    images, labels, _ = list_cases(folder, info.file_ending)
    cases = []
    for case_id in sorted(set(images) & set(labels)):
        channels = images[case_id]
        if sorted(channels) == list(range(info.num_channels)):
            cases.append(CaseFiles(case_id, [channels[c] for c in sorted(channels)], labels[case_id]))
    return cases
