"""The one place that speaks Ray Data: a checked pipeline becomes a streaming Dataset.

source blocks -> one map_batches per stage (tasks, or an actor pool for stages with a
setup()) -> the schema check -> a Datasink whose write tasks stage Parquet files.
Nothing is materialised in between and nothing but file metadata reaches the driver.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy, Datasink

from headrace import loader
from headrace.commit import PartitionCommit, StagedPart
from headrace.errors import ConfigError
from headrace.memory import HeapTrimmer
from headrace.pipeline import Pipeline
from headrace.records import ERROR, ERROR_TYPE, FULL_WEIGHT, WEIGHT, apply_stage
from headrace.runtime import Cluster
from headrace.stage import Stage
from headrace.utilisation import Call, Ledger
from headrace.validation import validate_batch

log = logging.getLogger("headrace")
MIN_BLOCKS = 8


@dataclass(frozen=True)
class Placement:
    """How one stage runs on this cluster, decided once before the run."""

    stage: str
    actors: tuple[int, int] | None  # None: stateless tasks
    cpus: float
    gpus: float
    device: str
    threads: int
    note: str = ""


def place(pipeline: Pipeline, cluster: Cluster, require_gpu: bool = False) -> list[Placement]:
    """Decide pools and resources for every stage; GPU stages fall back to CPU actors."""
    placements = []
    for stage in pipeline.stages:
        bounds = stage.pool_bounds()
        if stage.gpus and cluster.gpus >= stage.gpus:
            most = int(cluster.gpus // stage.gpus)
            low, high = bounds or (1, most)
            if low > most:
                raise ConfigError(
                    f"stage {stage.stage_name} needs at least {low} actor(s) with gpus={stage.gpus:g} "
                    f"but the cluster has {cluster.gpus:g} GPU(s)"
                )
            placements.append(Placement(stage.stage_name, (low, min(high, most)), stage.cpus, stage.gpus, "cuda", 1))
        elif stage.gpus:
            if require_gpu:
                raise ConfigError(
                    f"stage {stage.stage_name} needs gpus={stage.gpus:g} but the cluster has "
                    f"{cluster.gpus:g} GPU(s) and a GPU is required"
                )
            # One actor per core with one torch thread each: CPU stages with the same
            # resources run fused in these processes, so no core is oversubscribed.
            size = min(bounds[1] if bounds else cluster.cores, cluster.cores)
            threads = stage.cpu_threads or max(1, cluster.cores // size)
            note = (
                f"stage {stage.stage_name} asks for gpus={stage.gpus:g} but the cluster has no GPU: "
                f"running {size} CPU actor(s) with {threads} thread(s) each"
            )
            placements.append(Placement(stage.stage_name, (size, size), 1.0, 0.0, "cpu", threads, note))
        elif stage.stateful:
            low, high = bounds or (1, cluster.cores)
            threads = stage.cpu_threads or max(1, int(stage.cpus))
            placements.append(Placement(stage.stage_name, (low, high), stage.cpus, 0.0, "cpu", threads))
        else:
            placements.append(Placement(stage.stage_name, None, stage.cpus, 0.0, "cpu", max(1, int(stage.cpus))))
    return placements


class _StageActor:
    """An actor holding one set-up copy of a stateful stage; it reports every call."""

    def __init__(self, stage: Stage, schema: pa.Schema, keys: tuple[str, ...], device: str, threads: int, ledger=None):
        stage.device, stage.threads = device, threads
        stage.setup()
        self.stage, self.schema, self.keys, self.ledger = stage, schema, keys, ledger
        self.ready = time.time()
        self.actor = uuid.uuid4().hex[:8]
        self.trim = HeapTrimmer()
        self.gpu_ids = tuple(str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", []))
        if ledger is not None:  # an actor that never gets work still counts in the pool
            ledger.record.remote(Call(stage.stage_name, self.actor, self.ready, self.ready, self.ready, 0, None, self.gpu_ids))

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        forward_before = getattr(self.stage, "forward_seconds", None)
        result = apply_stage(self.stage, batch, self.schema, self.keys)
        if self.ledger is not None:
            forward_after = getattr(self.stage, "forward_seconds", None)
            forward = None if forward_before is None else forward_after - forward_before
            call = Call(self.stage.stage_name, self.actor, self.ready, started, time.time(), batch.num_rows, forward, self.gpu_ids)
            self.ledger.record.remote(call)
        self.trim()
        return result


@ray.remote(num_cpus=0)
class _LedgerActor:
    def __init__(self):
        self.ledger = Ledger()

    def record(self, call: Call) -> None:
        self.ledger.record(call)

    def summary(self) -> dict:
        return self.ledger.summary()


def build_dataset(pipeline: Pipeline, inputs: pa.Table, placements: list[Placement], ledger=None):
    """The streaming Dataset for ``inputs`` (a table of records from the source)."""
    for module in loader.FILE_MODULES:
        ray.cloudpickle.register_pickle_by_value(module)
    records = inputs.append_column(ERROR, pa.nulls(inputs.num_rows, ERROR_TYPE)).append_column(
        WEIGHT, pa.array([FULL_WEIGHT] * inputs.num_rows, pa.int64())
    )
    # Small inputs still get enough blocks to keep every actor of a pool busy.
    step = max(1, min(pipeline.source.files_per_block, -(-records.num_rows // MIN_BLOCKS)))
    blocks = [records.slice(i, step) for i in range(0, records.num_rows, step)]
    dataset = ray.data.from_arrow(blocks)
    for (stage, schema), placement in zip(pipeline.stage_schemas(), placements):
        common = dict(
            batch_size=stage.batch_size,
            batch_format="pyarrow",
            num_cpus=placement.cpus,
            memory=stage.memory,
            zero_copy_batch=True,
        )
        if placement.actors is None:
            fn = functools.partial(apply_stage, stage, out_schema=schema, keys=pipeline.keys)
            dataset = dataset.map_batches(fn, **common)
        else:
            low, high = placement.actors
            initial = stage.pool_initial()
            initial = min(max(initial, low), high) if initial is not None else None
            dataset = dataset.map_batches(
                _StageActor,
                fn_constructor_kwargs=dict(
                    stage=stage, schema=schema, keys=pipeline.keys,
                    device=placement.device, threads=placement.threads, ledger=ledger,
                ),
                compute=ActorPoolStrategy(min_size=low, max_size=high, initial_size=initial),
                num_gpus=placement.gpus or None,
                **common,
            )
    if pipeline.schema is not None:
        check = functools.partial(validate_batch, pipeline.schema, keys=pipeline.keys)
        dataset = dataset.map_batches(check, batch_format="pyarrow", batch_size=None, num_cpus=0.5)
    return dataset


class StagedParquetDatasink(Datasink):
    """Adapts PartitionCommit to Ray's Datasink: each write task stages its own files."""

    def __init__(self, commit: PartitionCommit, rows_per_file: int):
        self.commit = commit
        self.rows_per_file = rows_per_file
        self.parts: list[StagedPart] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "StageParquet"

    def write(self, blocks, ctx) -> StagedPart | None:
        tables = [block for block in blocks if block.num_rows]
        if not tables:
            return None
        return self.commit.write_part(pa.concat_tables(tables), ctx.task_idx)

    def on_write_complete(self, write_result) -> None:
        self.parts = [part for part in write_result.write_returns if part is not None]


def execute(pipeline: Pipeline, inputs: pa.Table, placements: list[Placement], commit: PartitionCommit) -> tuple[list[StagedPart], dict]:
    """Run the pipeline over ``inputs``, staging files.

    Returns what every write task staged, and the utilisation of each actor-pool stage.
    """
    sink = StagedParquetDatasink(commit, pipeline.sink.rows_per_file)
    ledger = _LedgerActor.remote()
    try:
        build_dataset(pipeline, inputs, placements, ledger).write_datasink(sink)
        utilisation = ray.get(ledger.summary.remote())
    finally:
        ray.kill(ledger)
    return sink.parts, utilisation
