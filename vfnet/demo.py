"""``make demo``: the whole pipeline on a small synthetic dataset, or on an MSD task (``--data``).

Run as ``python -m vfnet.demo --workdir vfnet_demo [--data <MSD task folder>]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vfnet import paths
from vfnet.demo_data import make_demo_dataset
from vfnet.planning import plan_and_preprocess, plan_summary


def _use_workdir(workdir: Path) -> None:
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "preprocessed"), ("vfnet_results", "results")):
        os.environ[var] = str(workdir / sub)
        (workdir / sub).mkdir(parents=True, exist_ok=True)


def run_demo(workdir: Path, data: Path | None = None, preset: str = "quick") -> dict:
    """Run every stage that exists, in order, and return where each result is."""
    start = time.perf_counter()
    workdir = Path(workdir).resolve()
    _use_workdir(workdir)
    results: dict[str, str] = {}

    def step(title: str) -> None:
        print(f"\n=== [{time.perf_counter() - start:6.1f} s] {title}", flush=True)

    if data is None:
        step("Writing the synthetic demo dataset")
        raw = make_demo_dataset(paths.raw_root())
    else:
        from dataset_conversion.msd import convert_msd

        step(f"Converting {data}")
        raw = convert_msd(Path(data))
    results["raw dataset"] = str(raw)
    dataset = raw.name

    step("Planning and preprocessing (holdout split)")
    plan = plan_and_preprocess(dataset, split_mode="holdout")
    run = plan.pop("_run")
    print(plan_summary(plan))
    results["plan"] = str(Path(run["folder"]) / "plans.json")

    total = time.perf_counter() - start
    print(f"\n=== Demo finished in {total:.1f} s. Results:")
    for what, where in results.items():
        print(f"  {what:<18}: {where}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("vfnet_demo"), help="where the demo writes everything")
    parser.add_argument("--data", type=Path, default=None, help="an MSD task folder instead of the synthetic data")
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args(argv)
    from vfnet.errors import VfnetError

    try:
        run_demo(args.workdir, args.data, args.preset)
    except VfnetError as exc:
        raise SystemExit(f"Error: {exc}") from None


if __name__ == "__main__":
    main()
