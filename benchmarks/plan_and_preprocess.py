"""Wall time and peak memory of vfnet_plan_and_preprocess on the shared Hippocampus (200 cases).

Usage: python benchmarks/plan_and_preprocess.py [--data ../shared/data/Task04_Hippocampus] [--repeats 3]
Target on a 2-core machine: at most 45 s (nnU-Net v2 takes 46 s for the same cases there).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfnet_bench_plan_"))
    env = dict(os.environ, vfnet_raw=str(work / "raw"), vfnet_preprocessed=str(work / "pre"),
               vfnet_results=str(work / "res"))
    subprocess.run([BIN / "vfnet_convert_msd", "-i", str(args.data), "-q"], env=env, check=True)
    command = [str(BIN / "vfnet_plan_and_preprocess"), "-d", "4", "-np", str(args.num_processes), "-q"]
    times = []
    for _ in range(args.repeats):
        shutil.rmtree(work / "pre", ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    rerun = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cases = len(list((work / "raw" / "Task04_Hippocampus" / "labelsTr").glob("*.nii.gz")))
    shutil.rmtree(work)
    body = f"""
`vfnet_plan_and_preprocess -d 4 -np {args.num_processes}` on {cases} shared Hippocampus cases (fresh
preprocessed folder each time; integrity check, fingerprint, plan, splits and arrays).

| measure | value |
|---|---|
| wall time, median of {args.repeats} | {statistics.median(times):.1f} s |
| wall times | {', '.join(f'{t:.1f}' for t in times)} s |
| rerun with every case current (check + skip) | {rerun:.1f} s |
| peak memory of the largest process | {peak_mib:.0f} MiB |
| target | at most 45 s (nnU-Net v2: 46 s on the same cases, 2 cores) |
"""
    path = write_results("plan_and_preprocess", "vfnet_plan_and_preprocess on Task04 Hippocampus", body,
                         {"cases": cases, "wall_s": times, "median_wall_s": statistics.median(times),
                          "rerun_s": rerun, "peak_rss_mib": peak_mib})
    print(path.read_text())


if __name__ == "__main__":
    main()
