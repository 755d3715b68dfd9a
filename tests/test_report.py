"""vfnet_report: case choice from crossval.json, Figure-2-style PNGs, curves and index.md."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vfnet import paths
from vfnet.atomic import atomic_path, write_json
from vfnet.experiment_planning.plans import Plan
from vfnet.networks.vfn import build_vfn
from vfnet.paths import copy_dataset_files
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.reporting import choose_cases, make_report
from vfnet.reporting.figures import middle_slice
from vfnet.views import VIEWS
from vfnet_cli.report import report_entry

PRESET = "quick"


def _probabilities(label: np.ndarray, num_classes: int, rng, noise: float) -> np.ndarray:
    one_hot = np.stack([(label == c) for c in range(num_classes)]).astype(np.float32)
    noisy = one_hot + noise * rng.random(one_hot.shape, dtype=np.float32)
    return (noisy / noisy.sum(0, keepdims=True)).astype(np.float16)


def fake_results(folder, with_vfn: bool = True, with_crossval: bool = True):
    """Held-out maps of every test fold (axial perfect, the others noisy), fold VFNs, crossval records."""
    plan, data = Plan.load(folder), PreprocessedDataset(folder)
    results = paths.results_root() / folder.name
    copy_dataset_files(folder, results)
    rng = np.random.default_rng(0)
    for fold in plan["fold_names"]:
        for view in VIEWS:
            unit_dir = paths.unit_dir(results, PRESET, f"2d_{view}", fold)
            for case in data.fold_cases([fold]):
                _, label = data.load(case)
                probs = _probabilities(label, plan.num_classes, rng, 0.0 if view == "axial" else 1.2)
                with atomic_path(unit_dir / "predictions" / f"{case}.npz", suffix=".npz") as tmp:
                    np.savez_compressed(tmp, probabilities=probs)
            with atomic_path(unit_dir / "progress.png", suffix=".png") as tmp:
                matplotlib.image.imsave(tmp, np.full((4, 4), int(fold)), vmin=0, vmax=3)
        if with_vfn:
            vfn_dir = paths.unit_dir(results, PRESET, "vfn", fold)
            vfn_dir.mkdir(parents=True)
            torch.manual_seed(int(fold))
            torch.save({"network": build_vfn(plan, plan.num_channels, plan.num_classes).state_dict()},
                       vfn_dir / "checkpoint_final.pth")
    # a unit without progress.png whose checkpoint keeps the history: its curves are re-plotted
    history = [{"iteration": i, "train_loss": 1 / i, "val_loss": 1 / i, "val_dice": 0.5, "lr": 0.01,
                "seconds": 1.0, "data_wait": 0.1} for i in (1, 2, 3)]
    all_dir = paths.unit_dir(results, PRESET, "2d_axial", "all")
    all_dir.mkdir(parents=True)
    torch.save({"network": {}, "history": history}, all_dir / "checkpoint_latest.pth")
    if with_crossval:
        gains = {case: 0.01 * i for i, case in enumerate(data.all_cases)}
        gains[data.all_cases[2]], gains[data.all_cases[5]] = 0.30, -0.20
        cases = {case: {"fold": data.fold_of(case), "dice": {"majority": {"organ": 0.6, "overall": 0.6},
                                                                "vfn": {"organ": 0.6 + g, "overall": 0.6 + g}}}
                 for case, g in gains.items()}
        crossval = results / PRESET / "crossval"
        write_json(crossval / "crossval.json", {"preset": PRESET, "split_mode": "cca",
                                                "methods": ["majority", "vfn"], "labels": {"organ": 1},
                                                "cases": cases, "best": {"method": "vfn", "postprocess": False}})
        (crossval / "crossval.md").write_text("# Cross-validation of the demo\n\n| method | overall |\n| vfn | 61 |\n")
    return results, data


def _dice_rows(index: str) -> dict[str, list[str]]:
    rows = {}
    for line in index.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| demo_"):
            rows[cells[0]] = cells
    return rows


def test_choose_cases_alternates_gain_and_loss():
    crossval = {"cases": {c: {"dice": {"majority": {"overall": 0.5}, "vfn": {"overall": 0.5 + g}}}
                          for c, g in {"a": 0.1, "b": -0.3, "c": 0.4, "d": 0.0}.items()}}
    picks = choose_cases(crossval, 3, ["a", "b", "c", "d"])
    assert [c for c, _ in picks] == ["c", "b", "a"]
    assert "gains most" in picks[0][1] and "+40.0" in picks[0][1] and "loses most" in picks[1][1]
    # only available cases are picked; without a VFN, best and worst majority
    assert [c for c, _ in choose_cases(crossval, 2, ["a", "d"])] == ["a", "d"]
    no_vfn = {"cases": {c: {"dice": {"majority": {"overall": v}}} for c, v in {"a": 0.2, "b": 0.9, "c": 0.5}.items()}}
    assert choose_cases(no_vfn, 2, ["a", "b", "c"]) == [("b", "best majority Dice (90.0%)"),
                                                        ("a", "worst majority Dice (20.0%)")]
    assert [c for c, _ in choose_cases(None, 2, ["z", "y", "x"])] == ["x", "y"]


def test_middle_slice_is_the_middle_of_the_organ():
    label = np.zeros((10, 6, 8), np.uint8)
    label[2:7, 1, 3:5] = 1
    assert middle_slice(label, "axial") == 4
    assert middle_slice(label, "coronal") == 1 and middle_slice(label, "sagittal") == 3
    assert middle_slice(np.zeros_like(label), "axial", [label]) == 4
    assert middle_slice(np.zeros_like(label), "axial") == 5


def test_report_picks_best_gain_and_worst_loss(demo_preprocessed):
    results, data = fake_results(demo_preprocessed)
    folder = make_report(None, preset=PRESET, num_cases=2, quiet=True)
    assert folder == results / PRESET / "report"
    index = (folder / "index.md").read_text()
    best, worst = data.all_cases[2], data.all_cases[5]
    rows = _dice_rows(index)
    assert list(rows) == [best, worst]
    assert "VFN gains most over majority (+30.0 Dice points)" in rows[best][1]
    assert "VFN loses most against majority (-20.0 Dice points)" in rows[worst][1]
    assert "| case | why | axial | coronal | sagittal | majority | vfn |" in index
    # the axial maps are the ground truth: Dice 100 on that panel, and the VFN panel has a value
    assert all(r[2] == "100.00" and r[6] != "–" for r in rows.values())
    figure = matplotlib.image.imread(folder / "cases_axial.png")
    assert "![cases](cases_axial.png)" in index and figure.shape[0] > 200 and figure.shape[1] > figure.shape[0]
    assert "### Cross-validation of the demo" in index and "| vfn | 61 |" in index
    for fold in ("0", "1", "2", "3"):
        for view in VIEWS:
            copied = folder / "curves" / f"2d_{view}__{fold}.png"
            source = paths.unit_dir(results, PRESET, f"2d_{view}", fold) / "progress.png"
            assert copied.read_bytes() == source.read_bytes()
            assert f"(curves/2d_{view}__{fold}.png)" in index
    assert matplotlib.image.imread(folder / "curves" / "2d_axial__all.png").shape[0] > 100
    assert "No VFN" not in index


def test_report_without_vfn_or_crossval_shows_what_exists(demo_preprocessed, tmp_path):
    fake_results(demo_preprocessed, with_vfn=False, with_crossval=False)
    folder = make_report("99", preset=PRESET, num_cases=3, out_dir=tmp_path / "rep", quiet=True,
                         slice_view="coronal")
    index = (folder / "index.md").read_text()
    assert folder == tmp_path / "rep" and (folder / "cases_coronal.png").is_file()
    assert "No VFN is trained for preset 'quick'" in index and "vfnet_train vfn" in index
    assert "No crossval.json yet" in index and "run `vfnet_crossval`" in index
    assert "| case | why | axial | coronal | sagittal | majority |" in index
    assert len(_dice_rows(index)) == 3


def test_cli_draws_the_chosen_cases(demo_preprocessed):
    _, data = fake_results(demo_preprocessed)
    chosen = data.all_cases[:2]
    result = CliRunner().invoke(report_entry, ["--preset", PRESET, "--cases", ",".join(chosen), "-q"])
    assert result.exit_code == 0, result.output
    index_path = Path(result.output.strip().split("Report written to ")[-1])
    assert list(_dice_rows(index_path.read_text())) == chosen
    result = CliRunner().invoke(report_entry, ["--preset", PRESET, "--cases", "nobody"])
    assert result.exit_code == 2 and "nobody" in result.output
    result = CliRunner().invoke(report_entry, ["--preset", "paper"])
    assert result.exit_code == 2 and "no results for preset 'paper'" in result.output


@pytest.mark.parametrize("missing", ["vfnet_preprocessed"])
def test_report_without_preprocessed_arrays_still_lists_curves(demo_preprocessed, monkeypatch, tmp_path, missing):
    fake_results(demo_preprocessed)
    monkeypatch.setenv(missing, str(tmp_path / "empty"))
    index = (make_report(None, preset=PRESET, quiet=True) / "index.md").read_text()
    assert "no case can be drawn" in index and "(curves/2d_axial__0.png)" in index
