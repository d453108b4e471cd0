"""Running a pipeline for one logical date: list, execute, commit."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from headrace import __version__, runtime
from headrace.commit import PartitionCommit
from headrace.config import ENGINE_PREFIX, EngineConf, default_ds, parse_bytes
from headrace.lock import RunLock
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

    run_id = new_run_id()
    master = runtime.Master.parse(engine.master)
    store = parse_bytes(engine.object_store_memory) if engine.object_store_memory is not None else None
    cluster = runtime.connect(master, engine.num_cpus, engine.num_gpus, store)
    from headrace import compiler  # imports Ray Data

    placements = compiler.place(pipeline, cluster, engine.require_gpu)
    warnings = [p.note for p in placements if p.note]
    for note in warnings:
        log.warning(note)
    _configure_data(engine.progress, store)
    timings["start_s"] = time.perf_counter() - started - timings["list_s"]

    # One run per date and output at a time; a killed run's lock is taken over at once.
    with RunLock(pipeline.sink.staging(ds) + ".lock", run_id):
        settings = {k: v for k, v in (config or {}).items() if not k.startswith(ENGINE_PREFIX)}
        commit = PartitionCommit(
            pipeline.sink, ds, run_id, pipeline.keys, pipeline.output_schema, fingerprint(pipeline, settings)
        )
        resumed = commit.prepare(engine.resume, {"pipeline": pipeline.name, "config": settings})
        if resumed.discarded:
            log.warning("staged files of an earlier run for ds=%s discarded: %s", ds, resumed.discarded)
        commit.keep_complete(resumed, inputs.column(pipeline.keys[0]).to_pylist())
        todo = _without(inputs, pipeline.keys[0], resumed.complete)
        if resumed.complete:
            log.warning(
                "resuming ds=%s (attempt %d): %d of %d inputs were already staged; processing the other %d",
                ds, resumed.attempt + 1, len(resumed.complete), inputs.num_rows, todo.num_rows,
            )
        log.info("run %s: %d input files -> %s", run_id, todo.num_rows, pipeline.sink.partition(ds))
        mark = time.perf_counter()
        parts, utilisation = compiler.execute(pipeline, todo, placements, commit) if todo.num_rows else ([], {})
        parts = resumed.parts + parts
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
            "cluster": {"cpus": cluster.cpus, "gpus": cluster.gpus, "cores": cluster.cores,
                        "object_store_memory": cluster.object_store},
            "utilisation": utilisation,
            "timings": timings,
            "resume": {
                "attempt": resumed.attempt + 1,
                "inputs_resumed": len(resumed.complete),
                "inputs_processed": todo.num_rows,
                "discarded": resumed.discarded or None,
            },
        }
        gate = engine.max_quarantine_fraction if engine.max_quarantine_fraction is not None else pipeline.max_quarantine_fraction
        manifest["max_quarantine_fraction"] = gate
        manifest = commit.commit(parts, inputs, manifest, gate)
        timings["commit_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        return RunResult(manifest=manifest, warnings=warnings)


def fingerprint(pipeline: Pipeline, settings: dict[str, Any]) -> str:
    """What decides the rows of a run: the pipeline's settings, stages, schema and sink.

    Staged files of a run with another fingerprint are never mixed into this one.
    Engine settings (master, CPUs, the quality gate) do not change rows and are left out.
    """
    stages = [
        {"class": f"{type(s).__module__}.{type(s).__qualname__}", "name": s.stage_name,
         **{k: _plain(v) for k, v in sorted(vars(s).items()) if k not in ("device", "threads")}}
        for s in pipeline.stages
    ]
    document = {
        "headrace": __version__,
        "pipeline": pipeline.name,
        "settings": {k: _plain(v) for k, v in sorted(settings.items())},
        "stages": stages,
        "output": str(pipeline.output_schema),
        "source": repr(pipeline.source),
        "sink": repr(pipeline.sink),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A stable, JSON-able stand-in for a setting or a stage attribute."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (tuple, list, dict)):
        return repr(value)
    return type(value).__qualname__  # an object: its repr would hold a memory address


def _without(inputs: pa.Table, id_column: str, done: set[str]) -> pa.Table:
    """The input records whose id is not in ``done``."""
    if not done:
        return inputs
    finished = pc.is_in(inputs.column(id_column), pa.array(sorted(done), pa.string()))
    return inputs.filter(pc.invert(finished))


def _configure_data(progress: bool, object_store_memory: int | None) -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    # Ray Data's own budget, which also holds on a shared cluster; unset means Ray's default.
    limits = context.execution_options.resource_limits
    budget = float("inf") if object_store_memory is None else object_store_memory
    context.execution_options.resource_limits = limits.copy(object_store_memory=budget)
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
