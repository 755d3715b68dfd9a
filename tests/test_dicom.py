"""DICOM series folders: several series → a stated rule or --series; missing slices → a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vfnet.dicom import choose_series, read_dicom_series, series_note
from vfnet.errors import ImageReadError
from vfnet.imageio import read_image


def write_series(folder: Path, uid: str, slices: int, step: float = 2.0, drop: tuple[int, ...] = (),
                 value: int = 0) -> None:
    """A small axial CT series written slice by slice with its own ImagePositionPatient tags."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(slices):
        if index in drop:
            continue
        image = sitk.GetImageFromArray(np.full((8, 6), value + index, dtype=np.int16))
        image.SetSpacing((0.7, 0.7))
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.1", "0020|000e": uid, "0008|0018": f"{uid}.{index}",
                "0020|0013": str(index + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": f"-10\\-20\\{index * step:.3f}", "0028|0030": "0.7\\0.7", "0018|0050": str(step)}
        for tag, tag_value in tags.items():
            image.SetMetaData(tag, tag_value)
        writer.SetFileName(str(folder / f"{uid}_{index:03d}.dcm"))
        writer.Execute(image)


def test_a_regular_series_is_read_with_the_step_of_its_positions(tmp_path):
    write_series(tmp_path / "ct", "1.2.3.1", 5, step=2.5)
    image = read_image(tmp_path / "ct")
    assert image.GetSize() == (6, 8, 5)
    assert image.GetSpacing()[2] == pytest.approx(2.5, rel=1e-3)
    assert series_note(tmp_path / "ct") is None


def test_several_series_use_the_largest_and_say_so_or_the_one_asked_for(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, "1.2.3.7", 4, value=100)
    write_series(folder, "1.2.3.9", 6)
    uid, files = choose_series(folder)
    assert uid == "1.2.3.9" and len(files) == 6
    note = series_note(folder)
    assert "2 DICOM series" in note and "used 1.2.3.9 (6 slices" in note and "--series" in note
    assert read_dicom_series(folder).GetSize()[2] == 6
    chosen = read_dicom_series(folder, "1.2.3.7")
    assert chosen.GetSize()[2] == 4 and sitk.GetArrayFromImage(chosen).min() == 100
    with pytest.raises(ImageReadError, match="no DICOM series 9.9"):
        read_dicom_series(folder, "9.9")
    write_series(folder, "1.2.3.8", 6)  # a tie: the smallest UID wins
    assert choose_series(folder)[0] == "1.2.3.8"


def test_a_missing_slice_is_an_error_naming_the_folder_and_the_gap(tmp_path):
    folder = tmp_path / "gappy"
    write_series(folder, "1.2.3.1", 7, step=2.0, drop=(3,))
    with pytest.raises(ImageReadError) as info:
        read_image(folder)
    message = str(info.value)
    assert str(folder) in message and "missing slice" in message
    assert "4.000 mm between the slices at 4.000 and 8.000 mm" in message and "2.000 mm apart" in message


def test_uneven_slice_positions_are_an_error(tmp_path):
    folder = tmp_path / "uneven"
    write_series(folder, "1.2.3.1", 6, step=2.0)
    moved = sorted(folder.iterdir())[4]  # slice 4 moved from 8 mm to 9 mm
    image = sitk.ReadImage(str(moved))
    image.SetMetaData("0020|0032", "-10\\-20\\9.000")
    image.SetOrigin((-10, -20, 9.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(moved))
    writer.Execute(image)
    with pytest.raises(ImageReadError, match="not evenly spaced .*3.000 mm between the slices at 6.000 and 9.000"):
        read_image(folder)


def test_reading_a_series_keeps_the_process_locale(tmp_path):
    # GDCM's folder scan sets the C locale; left so, every later text file would be written as ASCII
    import locale

    from vfnet.atomic import read_json, write_json
    from vfnet.imageio import is_dicom_folder

    write_series(tmp_path / "s", "1.2.3", 4)  # GDCM's writer leaves the C locale too
    before = locale.setlocale(locale.LC_ALL, "C.UTF-8")
    try:
        assert is_dicom_folder(tmp_path / "s")
        read_image(tmp_path / "s")
        assert locale.setlocale(locale.LC_ALL) == before
        # and vfnet's own text files are UTF-8 whatever the locale
        locale.setlocale(locale.LC_ALL, "C")
        write_json(tmp_path / "note.json", {"text": "VFN − mean ± 1"})
        assert read_json(tmp_path / "note.json")["text"] == "VFN − mean ± 1"
    finally:
        locale.setlocale(locale.LC_ALL, "C.UTF-8")
