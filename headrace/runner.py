"""Running a pipeline for one logical date: list, execute, commit."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from headrace import runtime
from headrace.commit import PartitionCommit
from headrace.config import EngineConf, default_ds
from headrace.pipeline import Pipeline

log = logging.getLogger("headrace")


@dataclass
class RunResult:
    manifest: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]

    @property
    def partition(self) -> str:
        return self.manifest["partition"]

    @property
    def quarantine(self) -> str:
        return self.manifest["quarantine"]


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run(
    pipeline: Pipeline,
    ds: str | None = None,
    engine: EngineConf | None = None,
    config: dict[str, Any] | None = None,
) -> RunResult:
    """Run ``pipeline`` for logical date ``ds`` and publish its partition.

    Raises ConfigError (nothing ran), ConservationError or any execution error
    (nothing published; the previous partition is untouched).
    """
    engine = engine or EngineConf()
    ds = ds or default_ds()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    inputs = pipeline.source.list()  # a bad input fails here, before Ray starts
    timings["list_s"] = time.perf_counter() - started

    master = runtime.Master.parse(engine.master)
    cluster = runtime.connect(master, engine.num_cpus, engine.num_gpus)
    from headrace import compiler  # imports Ray Data

    placements = compiler.place(pipeline, cluster, engine.require_gpu)
    warnings = [p.note for p in placements if p.note]
    for note in warnings:
        log.warning(note)
    _configure_progress(engine.progress)
    timings["start_s"] = time.perf_counter() - started - timings["list_s"]

    run_id = new_run_id()
    commit = PartitionCommit(pipeline.sink, ds, run_id, pipeline.keys, pipeline.output_schema)
    commit.prepare()
    log.info("run %s: %d input files -> %s", run_id, inputs.num_rows, pipeline.sink.partition(ds))
    mark = time.perf_counter()
    parts, utilisation = compiler.execute(pipeline, inputs, placements, commit)
    timings["process_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    manifest = {
        "pipeline": pipeline.name,
        "name": engine.name or pipeline.name,
        "started_at": started_at,
        "config": config or {},
        "placement": [
            {"stage": p.stage, "actors": p.actors, "cpus": p.cpus, "gpus": p.gpus, "device": p.device, "threads": p.threads}
            for p in placements
        ],
        "cluster": {"cpus": cluster.cpus, "gpus": cluster.gpus, "cores": cluster.cores},
        "utilisation": utilisation,
        "timings": timings,
    }
    gate = engine.max_quarantine_fraction if engine.max_quarantine_fraction is not None else pipeline.max_quarantine_fraction
    manifest["max_quarantine_fraction"] = gate
    manifest = commit.commit(parts, inputs, manifest, gate)
    timings["commit_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started
    return RunResult(manifest=manifest, warnings=warnings)


def _configure_progress(enabled: bool) -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = enabled
    context.print_on_execution_start = False
