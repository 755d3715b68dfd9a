"""Run issue 13's attacks and write results/reliability.md and results/reliability.json.

The attacks are those of tests/test_reliability.py (tests/reliability_attacks.py): kill -9 of
preprocessing, training and prediction at seeded random moments, a full disk (a file-size
limit), and every bad input of issue 13, on the tiny synthetic dataset.

Usage:
    python benchmarks/reliability.py [--seed 13] [--kills 2] [--work /tmp/vfnet_reliability]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import write_results
from reliability_attacks import TINY_3D, run_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13, help="seeds the moments of the kills")
    parser.add_argument("--kills", type=int, default=2, help="kill rounds (each kills preprocessing, training "
                                                               "and prediction once, at seeds seed, seed+1, ...)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vfnet_reliability_"))
    start = time.perf_counter()
    try:
        outcomes = run_all(work, seed=args.seed, kills=args.kills)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    held = sum(o.held for o in outcomes)
    command = "python benchmarks/reliability.py " + " ".join(sys.argv[1:])
    rows = "\n".join(f"| {i} | {o.attack} | {o.expected} | {o.observed.replace('|', '/')} | "
                     f"{'held' if o.held else '**FAILED**'} |" for i, o in enumerate(outcomes, 1))
    body = f"""Command: `{command.strip()}` ({seconds:.0f} s). Every attack of issue 13 on the tiny synthetic
dataset (8 cases of 16 x 24 x 20, a 3D unit trained for {TINY_3D["iterations"]} iterations); the same list as
`tests/test_reliability.py`.

**{held} of {len(outcomes)} attacks held.**

| # | attack | expected | observed | outcome |
|---|---|---|---|---|
{rows}
"""
    path = write_results("reliability", "Reliability attacks (issue 13)", body, {
        "command": command.strip(), "seed": args.seed, "kills": args.kills, "seconds": round(seconds, 1),
        "attacks": len(outcomes), "held": held,
        "outcomes": [o.__dict__ for o in outcomes]})
    print(f"{held} of {len(outcomes)} attacks held; wrote {path}")
    sys.exit(0 if held == len(outcomes) else 1)


if __name__ == "__main__":
    main()
