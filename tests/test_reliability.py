"""Issue 13's attacks on the tiny synthetic dataset: kill -9 at seeded random moments, a full disk, bad inputs.

Runs the installed commands as subprocesses (see tests/reliability_attacks.py, shared with
``benchmarks/reliability.py``). What is asserted, per attack:

* kill -9 during preprocessing or prediction, then a rerun: arrays and labels bit-identical
  to a clean run, no temporary file left;
* kill -9 during training, then ``--continue``: the unit finishes its whole schedule and its final
  checkpoint loads with ``weights_only=True``. Weights are not compared with an uninterrupted run:
  the batch generator's position is not checkpointed, so batches after a resume differ;
* a file-size limit (standing in for a full disk; mounting a tmpfs needs privileges): exit 2 with
  one sentence and nothing empty or partial under a final name;
* every bad input of issue 13: one sentence and exit 2 (or exit 1 naming the case in prediction),
  never a traceback.
"""

from __future__ import annotations

import pytest
from reliability_attacks import run_all

pytestmark = pytest.mark.slow


def test_every_attack_holds(tmp_path):
    outcomes = run_all(tmp_path, seed=13)
    failed = [f"{o.attack}: expected {o.expected}; observed {o.observed}" for o in outcomes if not o.held]
    assert len(outcomes) >= 20
    assert not failed, "\n".join(failed)
