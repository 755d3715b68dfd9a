"""``vfnet_predict`` at scale: cases spread over Dask workers, or one part of a job sharded by hand.

``--part-id/--num-parts`` work as in nnU-Net: the cases, sorted by name, go round-robin to the
parts (case i to part i % num_parts), so several independent commands (cluster jobs) cover a
folder without overlap. ``--workers N`` (an embedded LocalCluster) or ``--scheduler ADDRESS``
splits the cases of this part into one shard per worker, round-robin again; each worker loads
the models once and predicts its shard with :func:`vfnet.prediction.predict.predict`, and the
reports are merged. Outputs and the ``vfnet_predict.log`` lines are the same as with one process.

Example:
    >>> report = predict_at_scale(source, target, "Task04_Hippocampus", workers=2)
    >>> len(report.written)
    60
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from vfnet.errors import VfnetError
from vfnet.prediction.predict import PredictionReport

T = TypeVar("T")


def select_part(items: Sequence[T], part_id: int, num_parts: int) -> list[T]:
    """Items ``part_id``, ``part_id + num_parts``, ... of ``items`` (already sorted).

    Raises:
        VfnetError: ``part_id`` is not in ``0 .. num_parts - 1``.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise VfnetError(f"--part-id {part_id} with --num-parts {num_parts}: the part id must be 0 .. "
                         f"{max(0, num_parts - 1)} (nnU-Net's convention: --part-id 0 --num-parts 2, then 1 2)")
    return list(items[part_id::num_parts])


def _merge(reports: Sequence[PredictionReport]) -> PredictionReport:
    merged = PredictionReport()
    for report in reports:
        merged.written += report.written
        merged.skipped += report.skipped
        merged.failed.update(report.failed)
        merged.seconds.update(report.seconds)
        merged.notes.update(report.notes)
    for names in (merged.written, merged.skipped):
        names.sort()
    return merged


def _predict_shard(arguments: dict, case_ids: list[str], num_threads: int | None) -> PredictionReport:
    """One worker's shard: load the models once, predict its cases (runs on the worker)."""
    from vfnet.prediction.predict import predict

    if num_threads:
        import torch

        torch.set_num_threads(num_threads)
    return predict(**{**arguments, "quiet": True, "case_ids": case_ids})


def predict_at_scale(source: Path, target: Path, *args, workers: int = 1, scheduler: str | None = None,
                     part_id: int = 0, num_parts: int = 1, **kwargs) -> PredictionReport:
    """:func:`vfnet.prediction.predict.predict` over part ``part_id`` of ``num_parts``, on ``workers`` processes.

    Args:
        source, target, args, kwargs: as for :func:`~vfnet.prediction.predict.predict`.
        workers: local Dask worker processes (1: predict here, without Dask).
        scheduler: address of an existing Dask cluster (then ``workers`` shards are still made,
            one per worker the cluster has when the job starts).
        part_id, num_parts: this command's share of the sorted cases (nnU-Net's ``-part_id/-num_parts``).
    """
    from vfnet.inference.inputs import discover_cases
    from vfnet.prediction.predict import predict

    case_ids = select_part([case.case_id for case in discover_cases(Path(source))], part_id, num_parts)
    if workers <= 1 and not scheduler:
        return predict(source, target, *args, **kwargs, case_ids=case_ids)
    from vfnet.pipeline.dask_runner import open_client

    arguments = dict(inspect.signature(predict).bind(source, target, *args, **kwargs).arguments)
    gpu = arguments.get("device") == "cuda"
    with open_client(workers, scheduler, gpu=gpu) as (client, threads):
        count = max(1, len(client.scheduler_info().get("workers", {}))) if scheduler else workers
        shards = [shard for shard in (case_ids[i::count] for i in range(count)) if shard]
        futures = [client.submit(_predict_shard, arguments, shard, threads, pure=False,
                                 resources={"GPU": 1} if gpu else None) for shard in shards]
        reports = client.gather(futures)
    return _merge(reports)
