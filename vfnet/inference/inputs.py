"""What ``vfnet_predict -i IN`` means: cases from a file, a folder of files, or DICOM series folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vfnet.errors import VfnetError
from vfnet.imageio import IMAGE_SUFFIXES, is_dicom_folder, strip_suffix

_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class InputCase:
    """One case to predict: its channel sources in order and the output file name."""

    case_id: str
    sources: list[Path]
    output: str | None = None  # the label file's name when -o names a file; default <case>.nii.gz

    @property
    def output_name(self) -> str:
        return self.output or f"{self.case_id}.nii.gz"


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.startswith(".")


def discover_cases(source: Path) -> list[InputCase]:
    """Group the inputs into cases.

    A file is one case. In a folder, ``<case>_0000``, ``<case>_0001``... are the channels of
    one case (nnU-Net's naming); a file without that suffix is a one-channel case; a
    subfolder holding a DICOM series is a case named after the folder. Other files are ignored.
    """
    source = Path(source)
    if not source.exists():
        raise VfnetError(f"input {source} does not exist")
    if source.is_file():
        stem = strip_suffix(source.name)
        match = _CHANNEL.match(stem)
        return [InputCase(match.group(1) if match and match.group(2) == "0000" else stem, [source])]
    if is_dicom_folder(source):
        return [InputCase(source.name, [source])]
    groups: dict[str, dict[int, Path]] = {}
    singles: list[InputCase] = []
    for path in sorted(source.iterdir()):
        if path.is_dir():
            if is_dicom_folder(path):
                singles.append(InputCase(path.name, [path]))
            continue
        if not _is_image_file(path):
            continue
        stem = strip_suffix(path.name)
        match = _CHANNEL.match(stem)
        if match:
            groups.setdefault(match.group(1), {})[int(match.group(2))] = path
        else:
            singles.append(InputCase(stem, [path]))
    cases = list(singles)
    for case_id, channels in groups.items():
        if sorted(channels) == list(range(len(channels))):
            cases.append(InputCase(case_id, [channels[c] for c in sorted(channels)]))
        else:  # "_2024" in a name is not a channel index
            cases += [InputCase(strip_suffix(p.name), [p]) for p in channels.values()]
    names = [c.case_id for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VfnetError(f"{source}: several inputs map to the same case name: {', '.join(duplicates)}")
    if not cases:
        raise VfnetError(f"{source}: no images (NIfTI, NRRD, MHA) or DICOM series folders found")
    return sorted(cases, key=lambda c: c.case_id)
