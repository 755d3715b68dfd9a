"""The training units of a plan as a dependency graph: what each unit needs before it can start.

2D view units and 3D units need nothing; the fusion set of VFN unit ``k`` needs the 2D units
whose held-out maps it reads (:func:`vfnet.fusion.fusion_set.map_sources`, every view); the VFN
units of ``k`` (with and without image) need that fusion set; crossval needs everything. The
graph is what :mod:`vfnet.pipeline.dask_runner` submits to Dask, what ``--print-jobs`` prints
stage by stage and what ``--slurm-script`` turns into job arrays chained with ``afterok``.

Example:
    >>> nodes = training_graph("Task04_Hippocampus", "quick")
    >>> [n.key for n in nodes if n.stage == "fusion"]
    ['fusion/0', 'fusion/1', 'fusion/2', 'fusion/3', 'fusion/all']
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vfnet import paths
from vfnet.pipeline.jobs import TrainingJob, _check_views, budgeted_jobs, dataset_jobs
from vfnet.views import VIEWS

EVENTS_FILE = "train_all_events.jsonl"  # one JSON line per unit start, end or failure, in <results>/<Task>/<preset>/


@dataclass
class Node:
    """One step of the graph.

    Args:
        key: unique name, ``<network>/<unit>`` (``2d_axial/0``, ``vfn/0``), ``fusion/<unit>`` or ``crossval``.
        stage: ``2d``, ``3d``, ``fusion``, ``vfn`` or ``crossval``.
        command: the shell command that does the same step alone.
        deps: keys of the nodes that must finish first.
        job: the training job (None for fusion sets and crossval).
        done_path: a node whose ``done_path`` exists is finished (training nodes use ``job.finished``).
        trains: a training unit (asks for a ``GPU`` worker resource when training on CUDA).
    """

    key: str
    stage: str
    command: str
    deps: tuple[str, ...] = ()
    job: TrainingJob | None = field(default=None, repr=False)
    done_path: Path | None = None
    trains: bool = False

    @property
    def finished(self) -> bool:
        """A training unit with its final checkpoint and summary, a fusion set with its manifest (crossval: never)."""
        if self.job is not None:
            return self.job.finished
        return self.done_path is not None and self.done_path.is_file()


def _fusion_dependencies(dataset: str, vfn_unit: str, views: Sequence[str]) -> tuple[str, ...]:
    from vfnet.experiment_planning.plans import Plan
    from vfnet.fusion.fusion_set import map_sources
    from vfnet.preprocessing.data import PreprocessedDataset

    preprocessed = paths.preprocessed_dataset(dataset)
    sources = map_sources(Plan.load(preprocessed), PreprocessedDataset(preprocessed), vfn_unit)
    return tuple(f"{paths.view_network(view)}/{unit}" for unit in sorted(set(sources.values())) for view in views)


def training_graph(dataset: str | int | None, preset: str, stage: str = "all",
                   views: Sequence[str] | None = None, crossval: bool = True) -> tuple[str, list[Node]]:
    """(dataset name, nodes in an order where every node comes after its dependencies).

    The jobs are those of :func:`vfnet.pipeline.jobs.dataset_jobs` (for a budgeted preset, those the
    budget covers). A dependency on a unit outside the graph (another stage, a view left out) is
    dropped: that unit must already be finished, and the step that reads it says so when it is not.
    """
    from vfnet.experiment_planning.plans import budget_minutes
    from vfnet.paths import fusion_set_dir

    name, jobs = dataset_jobs(dataset, preset, stage, views)
    if budget_minutes(preset) is not None:
        jobs = budgeted_jobs(jobs, stage)
    preprocessed = paths.preprocessed_dataset(name)
    nodes: list[Node] = []
    for job in jobs:
        if job.stage in ("2d", "3d"):
            nodes.append(Node(f"{job.network}/{job.unit}", job.stage, job.command(name, preset), job=job, trains=True))
    present = {node.key for node in nodes}
    fusion_units = sorted({job.unit for job in jobs if job.stage == "vfn"})
    for unit in fusion_units:
        deps = tuple(key for key in _fusion_dependencies(name, unit, VIEWS) if key in present)
        nodes.append(Node(f"fusion/{unit}", "fusion", f"vfnet_build_fusion_set -d {name} -f {unit} --preset {preset}",
                          deps, done_path=fusion_set_dir(preprocessed, preset, unit) / "manifest.json"))
    for job in jobs:
        if job.stage == "vfn":
            nodes.append(Node(f"{job.network}/{job.unit}", "vfn", job.command(name, preset), (f"fusion/{job.unit}",),
                              job=job, trains=True))
    if crossval and stage == "all" and set(_check_views(views)) == set(VIEWS):
        nodes.append(Node("crossval", "crossval", f"vfnet_crossval -d {name} --preset {preset}",
                          tuple(node.key for node in nodes)))
    return name, nodes


def stages(nodes: Sequence[Node]) -> list[list[Node]]:
    """Nodes grouped by depth: stage 0 needs nothing, stage i needs only nodes of earlier stages."""
    depth: dict[str, int] = {}
    for node in nodes:  # nodes come after their dependencies
        depth[node.key] = 1 + max((depth[d] for d in node.deps if d in depth), default=-1)
    grouped: list[list[Node]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for node in nodes:
        grouped[depth[node.key]].append(node)
    return grouped


STAGE_TITLES = {"2d": "2D view units", "3d": "3D U-Net units", "fusion": "fusion sets", "vfn": "VFN units",
                "crossval": "cross-validation"}


def stage_title(group: Sequence[Node]) -> str:
    kinds = list(dict.fromkeys(node.stage for node in group))
    return " and ".join(STAGE_TITLES[k] for k in kinds)


def print_lines(nodes: Sequence[Node], include_finished: bool = False) -> list[str]:
    """``--print-jobs``: a comment per stage, then one command per unfinished step of that stage.

    The steps of one stage are independent (run them in parallel); a stage may start only when
    the one before has finished.
    """
    lines = []
    for number, group in enumerate(stages(nodes), 1):
        todo = [node for node in group if include_finished or not node.finished]
        if todo:
            lines.append(f"# stage {number}: {stage_title(group)} (independent; after stage {number - 1})"
                         if number > 1 else f"# stage 1: {stage_title(group)} (independent)")
            lines.extend(node.command for node in todo)
    return lines


def slurm_script(nodes: Sequence[Node], sbatch_options: str = "") -> str:
    """A bash script that submits one SLURM job array per stage, each ``--dependency=afterok`` on the one before.

    ``bash FILE`` submits; SLURM runs ``FILE run <stage> `` for each array task. Extra sbatch options
    (partition, GPUs, time) go in ``SBATCH_OPTS`` or the ``#SBATCH``-free ``sbatch_options``.
    """
    groups = [[n for n in group if not n.finished] for group in stages(nodes)]
    groups = [g for g in groups if g]
    out = ["#!/bin/bash",
           "# vfnet training graph as SLURM job arrays, one per stage, each waiting for the one before (afterok).",
           "# Submit: bash THIS_FILE   (extra sbatch options: SBATCH_OPTS='--gres=gpu:1 --time=04:00:00' bash THIS_FILE)",
           "set -euo pipefail", ""]
    for number, group in enumerate(groups, 1):
        out.append(f"# stage {number}: {stage_title(group)}")
        out.append(f"STAGE_{number}=(")
        out.extend(f"  {json.dumps(node.command)}" for node in group)
        out.append(")")
    out += ["",
            'if [ "${1:-}" = run ]; then',
            '  declare -n commands="STAGE_$2"',
            '  eval "${commands[$SLURM_ARRAY_TASK_ID]}"',
            "  exit",
            "fi",
            f'OPTS="{sbatch_options} ${{SBATCH_OPTS:-}}"',
            'previous=""']
    for number, group in enumerate(groups, 1):
        out += ['dependency=${previous:+--dependency=afterok:$previous}',
                (f'previous=$(sbatch --parsable --job-name=vfnet-stage{number} --array=0-{len(group) - 1} '
                 f'$dependency $OPTS "$0" run {number})'),
                f'echo "stage {number} ({len(group)} task(s)): job $previous"']
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- running one node
def record_event(events: Path | None, key: str, event: str, **extra) -> None:
    """Append one line to the events log (small appends from several processes stay whole lines)."""
    if events is None:
        return
    events.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"key": key, "event": event, "time": time.time(), "host": socket.gethostname(),
                       "pid": os.getpid(), **extra})
    with open(events, "a") as handle:
        handle.write(line + "\n")


def run_node(node: Node, dataset: str, preset: str, options: dict, events: Path | None = None,
             num_threads: int | None = None) -> dict:
    """Do one step where it is called (a Dask worker, or here): skip it when finished, resume it when started.

    Returns:
        ``{"key", "status": "done" | "skipped", "seconds", "resumed"}``.
    """
    if node.finished:
        return {"key": node.key, "status": "skipped", "seconds": 0.0, "resumed": False}
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))
        options = {**options, "num_threads": options.get("num_threads") or int(num_threads)}
    resumed = node.job is not None and node.job.started
    record_event(events, node.key, "start", resumed=resumed, threads=num_threads)
    start = time.perf_counter()
    try:
        _run_step(node, dataset, preset, options)
    except BaseException as exc:
        record_event(events, node.key, "error", error=f"{type(exc).__name__}: {exc}")
        raise
    seconds = time.perf_counter() - start
    record_event(events, node.key, "end", seconds=round(seconds, 2))
    return {"key": node.key, "status": "done", "seconds": seconds, "resumed": resumed}


def _run_step(node: Node, dataset: str, preset: str, options: dict) -> None:
    if node.job is not None:
        node.job.run(dataset, preset, node.job.started, **options)
    elif node.stage == "fusion":
        from vfnet.fusion.fusion_set import build_fusion_set

        build_fusion_set(dataset, node.key.split("/", 1)[1], preset, quiet=options.get("quiet", True))
    elif node.stage == "crossval":
        from vfnet.evaluation.crossval import crossval

        crossval(dataset, preset, device=options.get("device", "auto"), quiet=options.get("quiet", True))
    else:
        raise ValueError(f"node {node.key} has nothing to run")


def events_path(dataset: str, preset: str) -> Path:
    return paths.results_root() / dataset / preset / EVENTS_FILE


def read_events(path: Path) -> list[dict]:
    """The events log as a list (an empty list when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


NodeCallback = Callable[[Node, dict], None]
