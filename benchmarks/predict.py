"""Seconds per case of vfnet_predict on shared Hippocampus cases, 2 CPU cores: views alone and views + VFN.

Uses the models that benchmarks/fusion.py trained (its work folder): the four fold units of
each view as an ensemble, and the deployment VFN ``all`` (trained here first if missing, on
the fold units' out-of-fold maps). Each timing covers the whole case: reading, LPS
reorientation, preprocessing, the views, fusion, undoing the preprocessing and writing.

Usage: python benchmarks/predict.py [--work benchmarks/work/fusion] [--cases 20]
Target: under 2.4 s per case for views + VFN with the 4-fold ensemble (nnU-Net's 3D model:
4.75 s per case here with its mirroring).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

PRESET = "quick"
PASSES = ("majority", "vfn", "vfn", "majority")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "fusion")
    parser.add_argument("--cases", type=int, default=20)
    args = parser.parse_args()
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "pre"), ("vfnet_results", "res")):
        os.environ[var] = str(args.work / sub)
    import torch

    torch.set_num_threads(2)
    from vfnet import paths
    from vfnet.pipeline.units import train_vfn_unit
    from vfnet.prediction.predict import predict

    start = time.perf_counter()
    train_vfn_unit(4, "all", PRESET, device="cpu", resume=True, quiet=True)
    vfn_all_s = time.perf_counter() - start
    raw = paths.raw_dataset(4)
    images = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[-args.cases:]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for path in images:
            shutil.copyfile(path, inputs / path.name)
        names = {"majority": "views (4-fold ensemble) + majority", "vfn": "views (4-fold ensemble) + VFN"}
        seconds, walls = {f: [] for f in names}, {f: [] for f in names}
        # this machine's speed drifts over minutes: alternate the two pipelines (A B B A) and pool each one's times
        for run, fusion in enumerate(PASSES):
            out = Path(tmp) / f"{fusion}_{run}"
            begin = time.perf_counter()
            report = predict(inputs, out, 4, PRESET, fusion=fusion, postprocess=False, device="cpu", quiet=True)
            walls[fusion].append(time.perf_counter() - begin)
            if report.failed:
                raise SystemExit(f"prediction failed: {report.failed}")
            seconds[fusion] += list(report.seconds.values())
        for fusion, name in names.items():
            rows[name] = {"median_s": statistics.median(seconds[fusion]), "mean_s": statistics.mean(seconds[fusion]),
                          "wall_s": statistics.mean(walls[fusion]), "cases": len(seconds[fusion])}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    vfn_row, views_row = rows["views (4-fold ensemble) + VFN"], rows["views (4-fold ensemble) + majority"]
    lines = "\n".join(f"| {name} | {r['median_s']:.2f} s | {r['mean_s']:.2f} s | {r['wall_s']:.1f} s |"
                      for name, r in rows.items())
    body = f"""
`vfnet_predict` on {len(images)} shared Hippocampus cases (quick-preset models of benchmarks/fusion.py),
CPU, 2 threads, no test-time mirroring; passes in the order {", ".join(PASSES)}, each pipeline's case times pooled. Times per case include reading, reorientation, preprocessing, the
three views with the 4 fold models each (12 2D networks), fusion, resampling back and writing.

| pipeline | median per case | mean per case | wall for all cases (models loaded once; mean of 2 passes) |
|---|---|---|---|
{lines}

- VFN share of the per-case time: {100 * (vfn_row['median_s'] - views_row['median_s']) / vfn_row['median_s']:.1f} %
- peak memory of the process: {peak_mib:.0f} MiB
- training the deployment VFN `all` beforehand: {vfn_all_s:.0f} s (0 when it already existed)
- target: under 2.4 s per case for views + VFN (nnU-Net 3d_fullres: 4.75 s per case here with mirroring,
  0.9 s without)
"""
    path = write_results("predict", "vfnet_predict speed on Task04 Hippocampus (CPU)", body,
                         {"rows": rows, "peak_rss_mib": peak_mib, "vfn_all_training_s": vfn_all_s})
    print(path.read_text())


if __name__ == "__main__":
    main()
