"""A new user's walk-through on the demo data, as someone coming from nnU-Net v2 would try it.

Train (tiny quick schedule) → predict with no --preset → evaluate → report → export → install
→ predict again with no --preset; saved probabilities, vfnet_ensemble, vfnet_apply_postprocessing,
``-o seg.nii.gz``; and every bad combination answers one sentence and the right exit code.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from conftest import demo_workspace

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.pipeline.units import train_2d_unit, train_vfn_unit
from vfnet.views import VIEWS
from vfnet_cli.deployment import export_model_entry, install_model_entry
from vfnet_cli.ensemble import apply_postprocessing_entry, ensemble_entry
from vfnet_cli.evaluate import evaluate_entry
from vfnet_cli.fusion import crossval_entry
from vfnet_cli.predict import predict_entry
from vfnet_cli.report import report_entry

TINY_2D = {"iterations": 20, "batch_size": 8, "num_workers": 0, "val_every": 20}
TINY_VFN = {"iterations": 4, "batch_size": 2, "val_every": 4}


def run(command, *args: str, code: int = 0):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def one_sentence(command, *args: str, code: int = 2) -> str:
    """The command fails with exactly one error line."""
    output = run(command, *args, code=code)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo dataset planned in holdout mode; nothing trained yet (the first test trains it)."""
    root, raw, monkey = demo_workspace(tmp_path_factory, "walkthrough")
    yield root, raw
    monkey.undo()


def test_new_user_walkthrough(demo, tmp_path, monkeypatch):
    _, raw = demo
    images, references = raw / "imagesTs", raw / "labelsTs"
    name = raw.name  # Task099_DemoOrgans; nnU-Net v2's spelling finds it too
    labels_json = read_json(raw / "dataset.json")["labels"]
    # nothing trained: the report and predict say so in one sentence instead of an empty report
    assert "nothing is trained" in one_sentence(report_entry, "-d", "Dataset099_DemoOrgans")
    assert "nothing is trained" in one_sentence(predict_entry, "-i", images, "-o", tmp_path / "p0", "-d", "99")

    for view in VIEWS:
        train_2d_unit(None, view, "holdout", "quick", device="cpu", quiet=True, schedule_overrides=TINY_2D,
                      features=[8, 16, 32])
    train_vfn_unit(None, "holdout", "quick", device="cpu", quiet=True, schedule_overrides=TINY_VFN)
    run(crossval_entry, "-d", "99", "-q")  # no --preset: the only trained one
    best = read_json(paths.results_root() / name / "quick" / "crossval" / "best_method.json")
    assert isinstance(best["postprocess_labels"], list) and set(best["dice_per_label"]) == {"organ", "lesion"}

    # predict with no --preset, with the fused probabilities saved nnU-Net's way
    first = tmp_path / "first"
    out = run(predict_entry, "-i", images, "-o", first, "-d", "99", "-q", "--save-probabilities", "-npp", 1, "-nps", 3)
    assert "Wrote 2 case(s)" in out
    for case in ("demo_009", "demo_010"):
        source = sitk.ReadImage(str(images / f"{case}_0000.nii.gz"))
        labels = sitk.ReadImage(str(first / f"{case}.nii.gz"))
        with np.load(first / f"{case}.npz") as archive:
            probabilities = archive["probabilities"].astype(np.float32)
        properties = json.loads((first / f"{case}.json").read_text())
        assert probabilities.shape == (len(labels_json), *sitk.GetArrayFromImage(source).shape)
        assert properties["shape"] == list(sitk.GetArrayFromImage(source).shape)
        assert np.allclose(properties["spacing"], source.GetSpacing())
        assert np.allclose(properties["direction"], source.GetDirection())
        assert properties["labels"] == {k: int(v) for k, v in labels_json.items()}
        np.testing.assert_allclose(probabilities.sum(axis=0), 1, atol=1e-2)
        agree = np.mean(np.argmax(probabilities, axis=0) == sitk.GetArrayFromImage(labels))
        assert agree > 0.97, agree
    settings = json.loads((first / "vfnet_predict.jsonl").read_text().splitlines()[0])
    assert settings["preset"] == "quick" and settings["fusion"] == best["method"]
    # the same again: skipped, and the end says how to redo them
    skipped = run(predict_entry, "-i", images, "-o", first, "-q")
    assert "Skipped 2 case(s)" in skipped and "--overwrite" in skipped

    # evaluate, report, a second model, the ensemble of both, post-processing of an existing folder
    run(evaluate_entry, "-ref", references, "-pred", first, "-d", "99", "-q")
    assert read_json(first / "summary.json")["num_cases"] == 2
    assert "Report written" in run(report_entry, "-d", "99", "-q", "--num-cases", 1)
    second = tmp_path / "second"
    run(predict_entry, "-i", images, "-o", second, "-q", "--save-probabilities", "--fusion", "mean",
        "--step-size", 0.25, "-chk", "best")
    ensembled = tmp_path / "ensembled"
    assert "Ensembled 2 case(s)" in run(ensemble_entry, "-i", first, second, "-o", ensembled, "-q",
                                        "--save-probabilities")
    with np.load(first / "demo_009.npz") as a, np.load(second / "demo_009.npz") as b, \
            np.load(ensembled / "demo_009.npz") as c:
        np.testing.assert_allclose(c["probabilities"].astype(np.float32),
                                   (a["probabilities"].astype(np.float32) + b["probabilities"]) / 2, atol=2e-3)
    assert sitk.ReadImage(str(ensembled / "demo_009.nii.gz")).GetSize() == \
        sitk.ReadImage(str(images / "demo_009_0000.nii.gz")).GetSize()
    cleaned = tmp_path / "cleaned"
    run(apply_postprocessing_entry, "-i", ensembled, "-o", cleaned, "-q")
    assert sorted(p.name for p in cleaned.glob("*.nii.gz")) == ["demo_009.nii.gz", "demo_010.nii.gz"]

    # one input file, -o a file name: that file is written, not a folder
    single = tmp_path / "single" / "seg.nii.gz"
    run(predict_entry, "-i", images / "demo_009_0000.nii.gz", "-o", single, "-q")
    assert single.is_file()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(single))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(first / "demo_009.nii.gz"))))

    # bad combinations: one sentence, exit 2 (user errors) or 1 (failed cases / missing predictions)
    wrong_preset = one_sentence(predict_entry, "-i", images, "-o", tmp_path / "p1", "--preset", "default")
    assert "quick" in wrong_preset and "--preset quick" in wrong_preset
    assert "leave out -f" in one_sentence(predict_entry, "-i", images, "-o", tmp_path / "p2", "-f", "0")
    assert "choose another -o" in one_sentence(predict_entry, "-i", images, "-o", images / "x")
    assert "step" in run(predict_entry, "-i", images, "-o", tmp_path / "p3", "--step-size", 2, code=2)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "demo_009.nii.gz").write_bytes((first / "demo_009.nii.gz").read_bytes())
    assert "missing" in run(evaluate_entry, "-ref", references, "-pred", lonely, "-q", code=1)
    assert "at least two" in one_sentence(ensemble_entry, "-i", first, "-o", tmp_path / "e1")
    assert "--save-probabilities" in one_sentence(ensemble_entry, "-i", first, lonely, "-o", tmp_path / "e2")

    # export with no --preset, install on "another machine", predict again with no --preset
    archive = tmp_path / "model.zip"
    assert "(quick preset)" in run(export_model_entry, "-d", "99", "-o", archive)
    assert "checkpoint_final.pth" in " ".join(zipfile.ZipFile(archive).namelist())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("vfnet_results", str(elsewhere))
    installed = run(install_model_entry, archive)
    assert "--preset quick" in installed
    again = tmp_path / "again"
    run(predict_entry, "-i", images, "-o", again, "-q")
    for case in ("demo_009", "demo_010"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / f"{case}.nii.gz"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(first / f"{case}.nii.gz"))))
    # an exported model carries only the final checkpoints of its views
    assert "-chk final" in one_sentence(predict_entry, "-i", images, "-o", tmp_path / "p4", "-chk", "best")
    # two trained presets: the error names both
    results = elsewhere / name
    (results / "paper").mkdir()
    for folder in (results / "quick").rglob("checkpoint_final.pth"):
        target = results / "paper" / folder.relative_to(results / "quick")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(folder.read_bytes())
    several = one_sentence(predict_entry, "-i", images, "-o", tmp_path / "p5")
    assert "paper" in several and "quick" in several
