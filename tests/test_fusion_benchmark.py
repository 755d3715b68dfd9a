"""The fusion benchmarks: fusion.py's ceiling of choosing a view with the truth known, vfn_variants.py's foldmaps diagnostic."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    saved = list(sys.path)  # the benchmarks put their own folder on the path too: all of it is undone
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path[:] = saved


@pytest.fixture(scope="module")
def fusion_benchmark():
    yield from _benchmark("fusion")


def _cases(**per_case):
    return {"cases": {case: {"a": a, "b": b, "overall": (a + b) / 2} for case, (a, b) in per_case.items()}}


def test_the_ceiling_takes_the_best_candidate_per_organ_or_per_case(fusion_benchmark):
    methods = {"axial": _cases(x=(90, 10), y=(50, 50)), "coronal": _cases(x=(10, 80), y=(40, 70)),
               "sagittal": _cases(x=(0, 0), y=(0, 0)), "mean": _cases(x=(60, 60), y=(45, 45)),
               "stack": _cases(x=(100, 100), y=(100, 100))}  # not a candidate: it is not one view
    ceiling = fusion_benchmark.selection_ceiling(methods, ["a", "b"])
    # per organ: x takes 90 and 80, y 50 and 70; per case: x mean's 60, y coronal's 55
    assert ceiling["per_label"] == pytest.approx((85 + 60) / 2)
    assert ceiling["per_case"] == pytest.approx((60 + 55) / 2)
    assert ceiling["per_label_minus_mean"] == pytest.approx(72.5 - 52.5)
    assert ceiling["per_case_minus_mean"] == pytest.approx(57.5 - 52.5)


def test_the_voxel_ceiling_takes_the_truth_where_a_view_votes_it(fusion_benchmark):
    import numpy as np

    label = np.array([0, 1, 2, 2, 1, 0])
    views = [np.array([0, 1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0, 2]), np.array([0, 0, 2, 0, 0, 0])]
    mean = np.array([0, 0, 1, 1, 2, 2])
    # voxels 0, 1, 2, 5: some view votes the truth; 3 and 4: none does, mean's label stays (wrong)
    np.testing.assert_array_equal(fusion_benchmark.any_view_right(label, views, mean), [0, 1, 2, 1, 2, 0])


def test_a_timing_counts_the_fastest_of_its_repeats(fusion_benchmark, monkeypatch):
    # a fake clock: the calls take 0.5, 0.2 and 0.4 s, so the fastest is 0.2 s, not the first or the mean
    durations = iter([0.5, 0.2, 0.4])
    clock = {"now": 0.0}
    calls = []

    def run(value, *, scale):
        calls.append(value)
        clock["now"] += next(durations)
        return value * scale

    monkeypatch.setattr(fusion_benchmark.time, "perf_counter", lambda: clock["now"])
    result, seconds = fusion_benchmark._fastest(run, 3, scale=2)
    assert result == 6
    assert calls == [3] * fusion_benchmark.REPEATS == [3, 3, 3]
    assert seconds == pytest.approx(0.2)


def test_probability_cells_cut_each_view_into_tenths(fusion_benchmark):
    import numpy as np

    cells = fusion_benchmark.probability_cells([np.array([0.05, 0.0]), np.array([0.95, 0.55]), np.array([1.0, 0.1])])
    # steps (0, 9, 9) and (0, 5, 1); a probability of exactly 1 stays in the top step
    assert cells.tolist() == [99, 51]


def test_the_table_ceiling_labels_the_cells_that_give_the_best_dice(fusion_benchmark):
    import numpy as np

    def case(groups):
        """(label, three views' maps) of 1×1×N voxels; groups: (voxels, of them foreground, each view's p)."""
        label = np.concatenate([np.arange(n) < k for n, k, _ in groups]).astype(np.uint8).reshape(1, 1, -1)
        p = np.concatenate([np.full(n, q) for n, _, q in groups]).reshape(1, 1, 1, -1)
        maps = np.concatenate([1 - p, p]).astype(np.float16)
        return label, [maps, maps, maps]

    # cell A (p 0.95): 10 voxels, all organ; cell C (p 0.05): 80 voxels, none; cell B (p 0.45): 100 voxels,
    # 45 of them organ. A alone scores 2·10/(10 + 55) = 30.8 % over both cases, A and B 2·55/(110 + 55) =
    # 66.7 %, so B is labelled though most of it is background (mean fusion, below one half there, would not)
    first = fusion_benchmark.table_counts(*case([(10, 10, 0.95), (80, 0, 0.05)]), num_classes=2)
    second = fusion_benchmark.table_counts(*case([(100, 45, 0.45)]), num_classes=2)
    assert first.shape == (1, 2, 1000) and first[0, 0].sum() == 90 and first[0, 1].sum() == 10
    dice = fusion_benchmark.table_dice([first, second])
    assert dice[0] == pytest.approx(100.0)
    assert dice[1] == pytest.approx(100 * 2 * 45 / (45 + 100))


def test_a_cross_fitted_table_scores_each_fold_with_the_other_folds_table(fusion_benchmark):
    import numpy as np

    def case(p, organ):
        """(label, three views' maps) of 1×1×4 voxels, all with the views' probability ``p``; ``organ`` of them organ."""
        label = (np.arange(4) < organ).astype(np.uint8).reshape(1, 1, 4)
        q = np.full((1, 1, 1, 4), p)
        maps = np.concatenate([1 - q, q]).astype(np.float16)
        return fusion_benchmark.table_counts(label, [maps, maps, maps], num_classes=2)

    # in fold a the cell p 0.45 is organ, in fold b the cell p 0.75 is: fitted in-sample, both are labelled and
    # every case scores 100; fitted on the other fold, each fold labels the cell it never has and scores 0
    counts = [case(0.45, 4), case(0.75, 4), case(0.45, 4)]
    assert fusion_benchmark.table_dice(counts) == [100.0, 100.0, 100.0]
    assert fusion_benchmark.cross_fitted_table_dice(counts, ["a", "b", "a"]) == [0.0, 0.0, 0.0]
    # with the other fold holding the same cell, the cross-fitted table is the in-sample one
    same = [case(0.45, 4), case(0.45, 2), case(0.45, 4)]
    assert fusion_benchmark.cross_fitted_table_dice(same, ["a", "b", "a"]) == pytest.approx(
        [100 * 2 * 4 / 8, 100 * 2 * 2 / 6, 100 * 2 * 4 / 8])
    assert all(np.isnan(fusion_benchmark.cross_fitted_table_dice(same, ["holdout"] * 3)))  # no other fold


def test_the_table_ceiling_labels_an_organ_no_case_has_nowhere(fusion_benchmark):
    import numpy as np

    label = np.zeros((1, 1, 4), dtype=np.uint8)
    p = np.array([0.0, 0.3, 0.6, 0.9]).reshape(1, 1, 1, 4)
    maps = np.concatenate([1 - p, p]).astype(np.float16)
    counts = fusion_benchmark.table_counts(label, [maps, maps, maps], num_classes=2)
    # both empty: Dice 100, as vfnet's dice counts two empty masks (labelling any cell would give 0)
    assert fusion_benchmark.table_dice([counts, counts]) == [100.0, 100.0]


@pytest.fixture(scope="module")
def variants_benchmark():
    yield from _benchmark("vfn_variants")


def _fusion_set(folder: Path, maps: str, cases: dict) -> None:
    from vfnet.atomic import write_json

    folder.mkdir(parents=True)
    for case in cases:
        (folder / f"{case}.npz").write_text(f"{maps} {case}")
    write_json(folder / "manifest.json", {"vfn_unit": folder.name, "cases": cases})


def test_the_foldmaps_diagnostic_trains_on_the_same_cases_with_the_fold_units_maps_then_puts_them_back(
        variants_benchmark, tmp_path, monkeypatch):
    from vfnet import paths
    from vfnet.atomic import read_json

    monkeypatch.setattr(paths, "preprocessed_dataset", lambda dataset: tmp_path)
    roi = [[0, 4], [1, 5], [2, 6]]
    fold0 = paths.fusion_set_dir(tmp_path, "p", "0")
    _fusion_set(fold0, "cca", {c: {"units": "cca", "roi": roi} for c in ("a", "b")})
    _fusion_set(paths.fusion_set_dir(tmp_path, "p", "all"), "fold", {c: {"units": "fold", "roi": roi} for c in "abc"})
    with variants_benchmark._fusion_set_maps_from("Task99_X", "p", "0", "all"):
        assert sorted(p.name for p in fold0.iterdir()) == ["a.npz", "b.npz", "manifest.json"]  # its cases only
        assert (fold0 / "a.npz").read_text() == "fold a"
        assert read_json(fold0 / "manifest.json")["cases"]["b"]["units"] == "fold"
    assert (fold0 / "a.npz").read_text() == "cca a"
    assert read_json(fold0 / "manifest.json")["cases"]["a"]["units"] == "cca"
    assert sorted(p.name for p in fold0.parent.iterdir()) == ["0", "all"]
    # another ROI (another crop of the case) is refused, and the fold's own fusion set is back
    _fusion_set(paths.fusion_set_dir(tmp_path, "p", "other"), "x", {c: {"units": "x", "roi": [[0, 3]] * 3} for c in "ab"})
    with pytest.raises(RuntimeError, match="another ROI"), \
            variants_benchmark._fusion_set_maps_from("Task99_X", "p", "0", "other"):
        pass
    assert (fold0 / "b.npz").read_text() == "cca b"
    assert sorted(p.name for p in fold0.parent.iterdir()) == ["0", "all", "other"]
    # a run killed inside leaves the swapped set and the kept one: the next run puts the fold's own back first
    fold0.rename(fold0.with_name("0_kept"))
    _fusion_set(fold0, "fold", {c: {"units": "fold", "roi": roi} for c in ("a", "b")})
    with variants_benchmark._fusion_set_maps_from("Task99_X", "p", "0", "all"):
        assert read_json(fold0 / "manifest.json")["cases"]["a"]["units"] == "fold"
    assert (fold0 / "a.npz").read_text() == "cca a"
    assert sorted(p.name for p in fold0.parent.iterdir()) == ["0", "all", "other"]
