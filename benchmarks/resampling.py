"""Resampling of anisotropic data measured: nnU-Net's separate coarse axis against one joint cubic zoom.

Every Task20_CHAOST2 case (1.25 × 1.25 × 7.7 mm) makes the round trip the pipeline makes for a
scan whose slices differ from the plan's: the image goes to another slice spacing with
preprocessing's cubic path and back; the label goes there with nearest neighbour (preprocessing's
label path, the same for both schemes) and back through prediction's soft-mask path
(``labels_to_input_geometry``). Each round trip is scored against the original: Dice per organ,
the image's root-mean-square error in units of its standard deviation, and seconds per case.
The scheme with the higher mean label Dice over both spacings wins (the plan's default).

Usage: python benchmarks/resampling.py [--data ../shared/data/Task20_CHAOST2]
Writes results/resampling.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

from vfnet.imageio import read_canonical
from vfnet.prediction.predict import labels_to_input_geometry
from vfnet.preprocessing.preprocessing import coarse_axis, resample, resample_to_shape

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task20_CHAOST2"
SCHEMES = {"joint": {"scheme": "joint", "anisotropy_threshold": 3.0},
           "separate_coarse_axis": {"scheme": "separate_coarse_axis", "anisotropy_threshold": 3.0}}
SLICE_SPACINGS = (5.0, 10.0)  # mm: finer and coarser slices than CHAOST2's 7.7


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def round_trip(image: np.ndarray, label: np.ndarray, spacing, grid, scheme: dict, labels: dict) -> dict:
    """One case, one other grid, one scheme: the image and label there and back, scored."""
    start = time.perf_counter()
    there = resample(image, spacing, grid, order=3, resampling=scheme)
    back = resample_to_shape(there, image.shape, order=3, coarse=coarse_axis(grid, spacing, scheme))
    label_there = resample(label, spacing, grid, order=0)
    properties = {"canonical_shape": list(label.shape), "labels": labels}
    label_back = labels_to_input_geometry(label_there, properties, len(labels), coarse_axis(grid, spacing, scheme))
    seconds = time.perf_counter() - start
    organs = {name: 100 * dice(label_back == value, label == value) for name, value in labels.items() if value}
    return {"dice": organs, "mean_dice": float(np.mean(list(organs.values()))),
            "image_rmse": float(np.sqrt(np.mean((back - image) ** 2))), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="the Task20_CHAOST2 folder (MSD layout)")
    args = parser.parse_args()
    dataset = json.loads((args.data / "dataset.json").read_text())
    labels = {name: int(value) for value, name in dataset["labels"].items()}
    cases = sorted((args.data / "imagesTr").glob("*.nii.gz"))
    results: dict = {name: {str(s): [] for s in SLICE_SPACINGS} for name in SCHEMES}
    for path in cases:
        image, spacing, _ = read_canonical(path)
        image = ((image - image.mean()) / image.std()).astype(np.float32)
        label = read_canonical(args.data / "labelsTr" / path.name)[0].round().astype(np.uint8)
        for slices in SLICE_SPACINGS:
            grid = (slices, spacing[1], spacing[2])
            for name, scheme in SCHEMES.items():
                results[name][str(slices)].append({"case": path.name, **round_trip(image, label, spacing, grid,
                                                                                       scheme, labels)})
        print(f"{path.name}: " + ", ".join(f"{n} {np.mean([r[s][-1]['mean_dice'] for s in r]):.2f}"
                                          for n, r in results.items()), flush=True)
    summary = {name: {s: {"mean_dice": float(np.mean([c["mean_dice"] for c in rows])),
                          "dice": {organ: float(np.mean([c["dice"][organ] for c in rows]))
                                   for organ in rows[0]["dice"]},
                          "image_rmse": float(np.mean([c["image_rmse"] for c in rows])),
                          "seconds_per_case": float(np.mean([c["seconds"] for c in rows]))}
                       for s, rows in per_spacing.items()}
               for name, per_spacing in results.items()}
    overall = {name: float(np.mean([v["mean_dice"] for v in per_spacing.values()])) for name, per_spacing in
               summary.items()}
    winner = max(overall, key=overall.get)
    tests = {}
    for s in map(str, SLICE_SPACINGS):
        separate = [c["mean_dice"] for c in results["separate_coarse_axis"][s]]
        joint = [c["mean_dice"] for c in results["joint"][s]]
        differences = np.subtract(separate, joint)
        tests[s] = {"difference": float(differences.mean()),
                    "wilcoxon_p": float(stats.wilcoxon(separate, joint).pvalue) if np.any(differences) else 1.0}
    organs = list(next(iter(summary["joint"].values()))["dice"])
    lines = [(f"Command: `python benchmarks/resampling.py`, on {len(cases)} cases of {args.data.name} "
             f"(spacing {spacing[2]:g} × {spacing[1]:g} × {spacing[0]:g} mm)."), "",
             ("Each case's image and label go to another slice spacing and back, as a scan with other slices goes "
             "through preprocessing and prediction. Dice (%) of the label that came back against the original; "
             "image RMSE in standard deviations; seconds per case (image and label)."), "",
             "| slices (mm) | scheme | " + " | ".join(organs) + " | mean Dice | image RMSE | s per case |",
             "|---|---|" + "---|" * (len(organs) + 3)]
    for s in map(str, SLICE_SPACINGS):
        for name in SCHEMES:
            row = summary[name][s]
            lines.append(f"| {s} | {name} | " + " | ".join(f"{row['dice'][o]:.2f}" for o in organs)
                         + f" | {row['mean_dice']:.2f} | {row['image_rmse']:.4f} | {row['seconds_per_case']:.2f} |")
    lines += ["", "| slices (mm) | separate − joint mean Dice | Wilcoxon p |", "|---|---|---|"]
    lines += [f"| {s} | {t['difference']:+.3f} | {t['wilcoxon_p']:.2g} |" for s, t in tests.items()]
    lines += ["", "Mean label Dice over both spacings: " + ", ".join(f"{n} {v:.3f}" for n, v in overall.items())
              + f". Winner: `{winner}`."]
    data = {"command": "python benchmarks/resampling.py", "dataset": args.data.name, "cases": len(cases),
            "slice_spacings_mm": list(SLICE_SPACINGS), "summary": summary, "overall_mean_dice": overall,
            "separate_minus_joint": tests, "winner": winner,
            "per_case": results}
    print(write_results("resampling", "Resampling anisotropic data: separate coarse axis against joint",
                        "\n".join(lines), data).read_text())


if __name__ == "__main__":
    main()
