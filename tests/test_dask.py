"""The training graph on a real Dask LocalCluster: dependency order, failures, reruns, print and SLURM forms.

The end-to-end tests train a tiny holdout plan (three 2D units, a fusion set, two VFNs, a 3D unit,
crossval) on 2 worker processes and read the events log every worker appends to.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from conftest import demo_workspace

from vfnet import paths
from vfnet.pipeline.dask_runner import open_client, run_graph, threads_per_worker, train_all_distributed
from vfnet.pipeline.graph import events_path, read_events, slurm_script, stages, training_graph
from vfnet_cli.train import train_all_entry

TINY = {"iterations": 6, "val_every": 6, "num_workers": 0, "batch_size": 2, "features": [8, 16, 32]}


@pytest.fixture(scope="module")
def holdout(tmp_path_factory):
    """A tiny synthetic dataset planned in holdout mode (module-scoped, with its own vfnet folders)."""
    root, _, monkey = demo_workspace(tmp_path_factory, "dask")
    yield root
    monkey.undo()


def _intervals(events: list[dict]) -> dict[str, tuple[float, float]]:
    starts = {e["key"]: e["time"] for e in events if e["event"] == "start"}
    return {e["key"]: (starts[e["key"]], e["time"]) for e in events if e["event"] == "end"}


def test_cca_graph_needs_the_right_2d_units_and_prints_stage_by_stage(demo_preprocessed, tmp_path):
    _, nodes = training_graph(None, "default")
    by_key = {n.key: n for n in nodes}
    # fold 0's fusion set reads the CCA units that left out fold 0 and another fold, in every view
    assert set(by_key["fusion/0"].deps) == {f"2d_{v}/cca_0_{j}" for v in ("axial", "coronal", "sagittal")
                                            for j in (1, 2, 3)}
    assert set(by_key["fusion/all"].deps) == {f"2d_{v}/{k}" for v in ("axial", "coronal", "sagittal")
                                              for k in range(4)}
    assert by_key["vfn/0"].deps == by_key["vfn_noimage/0"].deps == ("fusion/0",)
    assert by_key["3d/0"].deps == () and by_key["2d_axial/all"].deps == ()
    assert set(by_key["crossval"].deps) == set(by_key) - {"crossval"}
    grouped = stages(nodes)
    assert [sorted({n.stage for n in g}) for g in grouped] == [["2d", "3d"], ["fusion"], ["vfn"], ["crossval"]]
    script = tmp_path / "train.sh"
    script.write_text(slurm_script(nodes))
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert text.count("sbatch --parsable") == 4 and "--dependency=afterok:$previous" in text
    assert '"vfnet_train vfn 0 -d Task099_DemoOrgans --preset default"' in text
    result = CliRunner().invoke(train_all_entry, ["--slurm-script", str(tmp_path / "b.sh")])
    assert result.exit_code == 0 and (tmp_path / "b.sh").read_text() == text


def test_slurm_script_runs_each_stage_after_the_one_before(demo_preprocessed, tmp_path):
    """A fake sbatch records its arguments; the script chains the arrays and runs the right command per task."""
    _, nodes = training_graph(None, "default")
    script = tmp_path / "train.sh"
    script.write_text(slurm_script(nodes))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\necho $((1000 + $(wc -l < "$SBATCH_LOG")))\n')
    (fake / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "log")}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    calls = (tmp_path / "log").read_text().splitlines()
    assert len(calls) == 4
    assert "--dependency" not in calls[0] and "--array=0-37" in calls[0]  # 33 2D units and 5 3D units
    for number in (2, 3, 4):
        assert f"--dependency=afterok:{1000 + number - 1}" in calls[number - 1]
    task_env = {**env, "SLURM_ARRAY_TASK_ID": "0", "PATH": f"{fake}:/usr/bin:/bin"}
    run = subprocess.run(["bash", str(script), "run", "3"], env=task_env, capture_output=True, text=True, check=False)
    assert run.returncode == 127 and "vfnet_train" in run.stderr  # stage 3, task 0: the first VFN unit's command


def test_threads_are_divided_between_workers():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(3, cores=2) == 1


@pytest.mark.slow
def test_two_workers_respect_dependencies_and_a_rerun_skips_or_resumes(holdout):
    log: list[str] = []
    result = train_all_distributed(None, "default", workers=2, device="cpu", quiet=True, schedule_overrides=TINY,
                                   log=log.append)
    assert result.ok, "\n".join(log)
    name, nodes = training_graph(None, "default")
    assert sorted(result.done) == sorted(n.key for n in nodes)
    events = read_events(events_path(name, "default"))
    spans = _intervals(events)
    for node in nodes:
        for dep in node.deps:
            assert spans[node.key][0] >= spans[dep][1], f"{node.key} started before {dep} finished"
    # the 2D and 3D units are independent: two worker processes ran two of them at the same time
    first = [spans[n.key] for n in nodes if n.stage in ("2d", "3d")]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(first) for b in first[i + 1:]), spans
    assert len({e["pid"] for e in events}) == 2, events
    # a step beside another gets one worker's threads; crossval, which always runs alone, every worker's
    threads = {e["key"]: e["threads"] for e in events if e["event"] == "start"}
    assert threads["crossval"] == 2 * threads_per_worker(2), events
    beside = {key for key, (start, end) in spans.items()
              if any(k != key and s < end and start < e for k, (s, e) in spans.items())}
    assert beside and {threads[key] for key in beside} == {threads_per_worker(2)}, threads
    results = paths.results_root() / name / "default"
    assert (results / "crossval" / "crossval.json").is_file()

    # a rerun skips every finished unit (crossval runs again, as with one worker)
    again = train_all_distributed(None, "default", workers=2, device="cpu", quiet=True, schedule_overrides=TINY,
                                  log=log.append)
    assert again.ok and again.done == ["crossval"] and len(again.skipped) == len(nodes) - 1

    # an interrupted unit (latest checkpoint, no final one) is continued, not restarted
    vfn = results / "vfn" / "holdout"
    for file in ("checkpoint_final.pth", "summary.json"):
        (vfn / file).unlink()
    count = len(read_events(events_path(name, "default")))
    resumed = train_all_distributed(None, "default", workers=2, device="cpu", quiet=True,
                                    schedule_overrides=TINY, log=log.append)
    assert resumed.ok and sorted(resumed.done) == ["crossval", "vfn/holdout"]
    new = read_events(events_path(name, "default"))[count:]
    assert [e["resumed"] for e in new if e["key"] == "vfn/holdout" and e["event"] == "start"] == [True]
    assert (vfn / "summary.json").is_file()


def _finishes_at_once(unit_dir):
    def run(*args, **kwargs):
        unit_dir.mkdir(parents=True, exist_ok=True)
        for name in ("checkpoint_final.pth", "summary.json"):
            (unit_dir / name).write_text("{}")
        return unit_dir

    return run


@pytest.mark.slow
def test_a_failed_unit_and_a_killed_worker_stop_only_their_dependents(holdout):
    preset = "paper"  # its own results folder; the tiny schedule replaces the paper's

    def fails(*args, **kwargs):
        raise RuntimeError("injected failure")

    def kills_its_worker(*args, **kwargs):
        os._exit(1)

    name, nodes = training_graph(None, preset)
    # the units that do not fail finish at once (a final checkpoint and a summary): the failures are the point
    stubs = {n.key: _finishes_at_once(n.job.unit_dir) for n in nodes if n.job is not None}
    stubs.update({"2d_axial/holdout": fails, "3d/holdout": kills_its_worker})
    nodes = [dataclasses.replace(n, job=dataclasses.replace(n.job, run=stubs[n.key])) if n.job is not None else n
             for n in nodes]
    with open_client(workers=2, killed_worker_retries=0) as (client, threads):
        # glibc's dynamic mmap threshold stays on in the workers (Dask's default MALLOC_TRIM_THRESHOLD_ halves
        # the speed of CPU training)
        environ = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
        assert len(environ) == 2 and set(environ.values()) == {(None, "1")}
        result = run_graph(nodes, client, name, preset, {"device": "cpu", "quiet": True, "schedule_overrides": TINY},
                           threads, events_path(name, preset), log=lambda line: None)
    assert set(result.failed) == {"2d_axial/holdout", "3d/holdout"}
    assert "injected failure" in result.failed["2d_axial/holdout"]
    assert "KilledWorker" in result.failed["3d/holdout"]
    assert set(result.blocked) == {"fusion/holdout", "vfn/holdout", "vfn_noimage/holdout", "crossval"}
    assert result.blocked["vfn/holdout"] == "2d_axial/holdout"
    independent = [n.key for n in nodes if n.stage in ("2d", "3d") and n.key not in ("2d_axial/holdout", "3d/holdout")]
    assert "2d_coronal/holdout" in independent and sorted(result.done) == sorted(independent)
    lines = result.failure_lines()
    assert any(line.startswith("FAILED 3d/holdout") for line in lines)
    assert "not run vfn/holdout: needs 2d_axial/holdout, which failed" in lines
    results = paths.results_root() / name / preset
    assert not (results / "vfn").exists()
    shutil.rmtree(results)


def test_select_part_follows_nnunet():
    from vfnet.errors import VfnetError
    from vfnet.pipeline.distributed_predict import select_part

    cases = [f"case_{i}" for i in range(7)]
    assert select_part(cases, 0, 3) == ["case_0", "case_3", "case_6"]
    assert select_part(cases, 2, 3) == ["case_2", "case_5"]
    assert sorted(c for p in range(3) for c in select_part(cases, p, 3)) == cases
    with pytest.raises(VfnetError, match="part id must be 0 .. 2"):
        select_part(cases, 3, 3)


@pytest.mark.slow
def test_an_existing_cluster_runs_the_graph_by_its_address(holdout, one_torch_thread):
    from distributed import LocalCluster

    name, nodes = training_graph(None, "paper", stage="2d")
    nodes = [dataclasses.replace(n, job=dataclasses.replace(n.job, run=_finishes_at_once(n.job.unit_dir)))
             for n in nodes]
    with (LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
          open_client(scheduler=cluster.scheduler_address) as (client, threads)):
        assert threads is None  # an existing cluster's workers choose their own thread count
        result = run_graph(nodes, client, name, "paper", {"quiet": True}, threads, None, log=lambda line: None)
    assert result.ok and sorted(result.done) == sorted(n.key for n in nodes)
    shutil.rmtree(paths.results_root() / name / "paper")


@pytest.mark.slow
def test_cli_names_every_failure_and_exits_1(holdout):
    # the VFN stage alone, with no 2D unit trained for this preset: the fusion set fails, the VFNs are not run
    result = CliRunner().invoke(train_all_entry, ["--preset", "paper", "--stage", "vfn", "--workers", "2", "-q",
                                                  "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "FAILED fusion/holdout" in result.output and "ModelNotFoundError" in result.output
    assert "not run vfn/holdout: needs fusion/holdout, which failed" in result.output
    assert "not run vfn_noimage/holdout" in result.output
