"""Run the training graph on Dask: an embedded LocalCluster, or an existing cluster by address.

Each node is submitted once all its dependencies have finished; independent nodes run side by
side, one per worker. A failed node (an exception, or a worker killed twice under it) stops only
the nodes that need it; every failure is named at the end. A node that is already finished is
skipped, one that was interrupted is resumed from its latest checkpoint, so rerunning the same
command continues where the last one stopped.

The embedded cluster starts ``workers`` processes with one Dask thread each and gives each worker
``cores // workers`` torch threads; a step that will run alone (nothing else running or ready when
it is submitted, such as the final crossval) gets the threads of every worker instead, so the last
steps do not leave all workers but one idle. Training on CUDA asks for a ``GPU`` worker resource per
training unit (a LocalCluster gives each worker one; on a real cluster start the workers with
``--resources GPU=1``).

Example:
    >>> with open_client(workers=2) as (client, threads):
    ...     result = run_graph(nodes, client, "Task04_Hippocampus", "quick", {"device": "cpu"}, threads)
    >>> result.failed
    {}
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vfnet.pipeline.graph import Node, NodeCallback, run_node

KILLED_WORKER_RETRIES = 1  # a unit whose worker died is tried once more (it resumes from its latest checkpoint)


@dataclass
class GraphResult:
    """What a run of the graph did: finished and skipped nodes, failures and the nodes they blocked."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)  # node → the failed node it needed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    def failure_lines(self) -> list[str]:
        lines = [f"FAILED {key}: {error}" for key, error in self.failed.items()]
        lines += [f"not run {key}: needs {cause}, which failed" for key, cause in self.blocked.items()]
        return lines


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# the environment of embedded Dask workers: one OpenMP/BLAS thread per pool (torch's threads are set per unit)
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """torch threads for each of ``workers`` processes sharing ``cores``."""
    return max(1, (cores or available_cores()) // max(1, workers))


@contextlib.contextmanager
def open_client(workers: int = 1, scheduler: str | None = None, gpu: bool = False,
                killed_worker_retries: int = KILLED_WORKER_RETRIES) -> Iterator[tuple[object, int | None]]:
    """(Dask client, torch threads per worker) for an embedded LocalCluster or the cluster at ``scheduler``.

    For an existing cluster the threads are left to each worker (None): it uses its own cores.
    Worker processes are not daemons, so training data loaders may start their own processes.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client, None
        return
    settings = {"distributed.worker.daemon": False,
                "distributed.scheduler.allowed-failures": killed_worker_retries,
                "distributed.admin.tick.limit": "1h",  # a long training step is not a stalled event loop
                # one unit per worker thread at a time: a unit waiting in a worker's queue is not blamed
                # (and charged a retry) when another unit kills that worker
                "distributed.scheduler.worker-saturation": 1.0,
                # Dask's default also sets MALLOC_TRIM_THRESHOLD_=65536 in its workers: that turns off glibc's
                # dynamic mmap threshold, so every large tensor is a fresh mmap and its pages fault in again.
                # Two 2D units side by side trained 2x slower for it (63 s against 32 s for 369 iterations).
                "distributed.nanny.pre-spawn-environ": WORKER_ENVIRON,
                # the statistical profiler samples every worker thread's stack 100 times a second, holding the GIL
                "distributed.worker.profile.enabled": False,
                "distributed.scheduler.work-stealing": False,  # units wait on the scheduler (saturation 1.0)
                }
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               resources={"GPU": 1} if gpu else None)
        try:
            with Client(cluster) as client:
                yield client, threads_per_worker(workers)
        finally:
            cluster.close()


def _run_on_worker(node: Node, dataset: str, preset: str, options: dict, events: Path | None,
                   num_threads: int | None) -> dict:
    """Run one node on a Dask worker; without a thread count, the worker's cores divided by its Dask threads."""
    if not num_threads and not options.get("num_threads"):
        from distributed import get_worker

        num_threads = threads_per_worker(get_worker().state.nthreads)
    return run_node(node, dataset, preset, options, events, num_threads)


def _dependents(nodes: Sequence[Node]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {node.key: [] for node in nodes}
    for node in nodes:
        for dep in node.deps:
            out.setdefault(dep, []).append(node.key)
    return out


def run_graph(nodes: Sequence[Node], client, dataset: str, preset: str, options: dict,
              num_threads: int | None = None, events: Path | None = None, gpu: bool = False,
              log: Callable[[str], None] = print, on_done: NodeCallback | None = None,
              alone_threads: int | None = None) -> GraphResult:
    """Submit every unfinished node once its dependencies are done; wait for all of them.

    Args:
        nodes: the graph (:func:`vfnet.pipeline.graph.training_graph`), dependencies first.
        client: a ``distributed.Client``.
        options: passed to each training function (``device``, ``quiet``, ``schedule_overrides``...).
        num_threads: torch threads per worker (None: the worker's own choice).
        events: the events log each worker appends to (start, end, error of every node).
        gpu: training nodes ask for one ``GPU`` worker resource.
        on_done: called here as ``on_done(node, info)`` when a node has finished (budget re-planning).
        alone_threads: torch threads for a node submitted when no other node runs or is ready (it then
            runs alone until it finishes: every waiting node needs it or a node not yet started).
    """
    from distributed import as_completed

    by_key = {node.key: node for node in nodes}
    dependents = _dependents(nodes)
    result = GraphResult()
    finished = {node.key for node in nodes if node.finished}
    result.skipped.extend(sorted(finished))
    waiting = [node for node in nodes if node.key not in finished]
    submitted: dict = {}
    running: set[str] = set()

    def submit_ready(queue: as_completed) -> None:
        ready = [node for node in waiting if all(dep in finished or dep not in by_key for dep in node.deps)]
        threads = alone_threads if alone_threads and len(ready) == 1 and not running else num_threads
        for node in ready:
            waiting.remove(node)
            resources = {"GPU": 1} if gpu and node.trains else None
            future = client.submit(_run_on_worker, node, dataset, preset, options, events, threads,
                                   key=f"vfnet-{dataset}-{preset}-{node.key}", pure=False, resources=resources)
            submitted[future.key] = node
            running.add(future.key)
            queue.add(future)
            log(f"submitted {node.key}: {node.command}")

    def block(key: str, cause: str) -> None:
        for child in dependents.get(key, []):
            node = by_key[child]
            if node in waiting:
                waiting.remove(node)
                result.blocked[child] = cause
                block(child, cause)

    queue = as_completed()
    submit_ready(queue)
    for future in queue:
        node = submitted[future.key]
        running.discard(future.key)
        try:
            info = future.result()
        except Exception as exc:  # noqa: BLE001 - every failure is reported at the end
            result.failed[node.key] = f"{type(exc).__name__}: {exc}"
            log(f"FAILED {node.key}: {type(exc).__name__}: {exc}")
            block(node.key, node.key)
            continue
        finally:
            future.release()
        finished.add(node.key)
        # a unit finished by this run whose worker died before its result was collected is run again by Dask
        # and then finds itself finished: it still counts as done here
        result.done.append(node.key)
        log(f"finished {node.key} ({info['status']}, {info['seconds']:.0f} s{', resumed' if info['resumed'] else ''})")
        if on_done is not None and info["status"] == "done":
            on_done(node, info)
        submit_ready(queue)
    return result


def train_all_distributed(dataset: str | int | None, preset: str = "default", stage: str = "all",
                          views: Sequence[str] | None = None, workers: int = 2, scheduler: str | None = None,
                          log: Callable[[str], None] = print, allocation: str | None = None,
                          run_crossval: bool = True, nodes: Sequence[Node] | None = None,
                          **options) -> GraphResult:
    """``vfnet_train_all --workers N`` / ``--scheduler ADDRESS``: the training graph on Dask.

    A budgeted preset is calibrated here with one worker's torch threads and planned for
    ``workers × budget`` minutes of compute (:func:`vfnet.training.budget.plan_budget`); after each
    unit its measured time is recorded and the units not yet started are re-planned. Each worker
    reads its unit's schedule from ``budget.json`` when the unit starts.

    Args:
        nodes: the graph to run (default: :func:`vfnet.pipeline.graph.training_graph`; tests pass
            their own to inject failures).
        options: passed to each training function (``device``, ``quiet``, ``schedule_overrides``...).

    Returns:
        What was done, skipped, failed and blocked (the caller exits 1 when ``not result.ok``).
    """
    import torch

    from vfnet import paths
    from vfnet.atomic import read_json
    from vfnet.device import resolve_device
    from vfnet.experiment_planning.plans import Plan, budget_minutes
    from vfnet.pipeline.graph import events_path, training_graph
    from vfnet.training.budget import load_or_plan_budget

    device = options.get("device", "auto")
    gpu = device == "cuda" or (device == "auto" and not scheduler and torch.cuda.is_available())
    if nodes is None:
        name, nodes = training_graph(dataset, preset, stage, views, crossval=run_crossval)
    else:
        name = paths.preprocessed_dataset(dataset).name
    preprocessed = paths.preprocessed_dataset(name)
    events = events_path(name, preset)
    pending = [n for n in nodes if not n.finished]
    log(f"{name}: {len(nodes) - len(pending)} of {len(nodes)} step(s) already finished, {len(pending)} to run "
        f"on {'the Dask cluster at ' + scheduler if scheduler else f'{workers} local worker(s)'}")
    with open_client(workers, scheduler, gpu=gpu) as (client, threads):
        threads = options.pop("num_threads", None) or threads
        budget = None
        if budget_minutes(preset) is not None and stage != "3d":
            saved = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)  # calibrate at one worker's speed
            try:
                budget = load_or_plan_budget(preprocessed, paths.results_root() / name, preset,
                                             resolve_device(device if not gpu else "cuda"), allocation,
                                             quiet=options.get("quiet", False), workers=1 if scheduler else workers)
            finally:
                torch.set_num_threads(saved)
            for line in budget.summary_lines():
                log(line)
        def on_done(node: Node, info: dict) -> None:
            if budget is None:
                return
            if node.stage == "crossval":
                budget.data["crossval_actual_s"] = round(info["seconds"], 1)
                budget.save()
                return
            if node.stage == "fusion":  # planned as part of its VFN unit
                budget.record_fusion_set(node.key.split("/", 1)[1], info["seconds"])
                return
            if node.job is None:
                return
            budget.record(node.job.network, node.job.unit, info["seconds"])
            started = {f"{n.job.network}/{n.job.unit}" for n in nodes if n.job is not None and
                       (n.job.started or n.job.finished)}
            recorded = sum(u.get("actual_s", 0.0) for u in budget.data["units"].values())
            budget.replan(Plan.load(preprocessed), read_json(preprocessed / "splits.json"),
                          budget.data["calibration"]["seconds"] + recorded, started)

        alone = threads * workers if threads and not scheduler and not gpu else None
        result = run_graph(nodes, client, name, preset, options, threads, events, gpu, log, on_done, alone)
    for line in result.failure_lines():
        log(line)
    return result
