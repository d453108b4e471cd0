"""A pipeline: source -> stages -> schema -> sink, checked when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa

from headrace.errors import PipelineError
from headrace.envelope import HIDDEN, enveloped
from headrace.sink import ParquetSink
from headrace.source import Files
from headrace.stage import BATCH_FORMATS, Stage

# Rows per block that a stage kept apart (fuse=False: ReadTable) is cut into, where the
# actor pool after it takes whole blocks (batch_size=None); see ray_adapter.cut_rows.
CUT_ROWS = 1024


@dataclass(frozen=True)
class Pipeline:
    """A declared pipeline. Building it checks the column contract and the resources.

    ``schema`` is a pandera (polars) DataFrameSchema checked on every batch before it
    is written; ``columns`` picks and orders the output columns (default: all).
    """

    name: str
    source: Files
    stages: Sequence[Stage]
    sink: ParquetSink
    schema: Any = None
    columns: Sequence[str] | None = None
    max_quarantine_fraction: float = 0.5  # quality gate; 1.0 turns it off
    _schemas: list[pa.Schema] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.max_quarantine_fraction is None or not 0 <= self.max_quarantine_fraction <= 1:
            raise PipelineError("max_quarantine_fraction must be a number from 0 to 1 (1.0 turns the gate off)")
        object.__setattr__(self, "_schemas", self._check())

    @property
    def keys(self) -> tuple[str, ...]:
        return self.source.keys

    @property
    def row_id(self) -> str | None:
        """The column holding each row's own id where the source's inputs are not its
        records (table splits), else None."""
        return getattr(self.source, "row_id", None)

    @property
    def error_keys(self) -> tuple[str, ...]:
        """What an error row keeps of its record: the keys, and the row's own id."""
        return (*self.keys, self.row_id) if self.row_id else self.keys

    def stage_schemas(self) -> list[tuple[Stage, pa.Schema]]:
        """Each stage with the schema of the batches it emits (error column included)."""
        return list(zip(self.stages, self._schemas[1:]))

    @property
    def input_schema(self) -> pa.Schema:
        return self._schemas[0]

    @property
    def record_schema(self) -> pa.Schema:
        """The schema of batches reaching the schema check and the sink."""
        return self._schemas[-1]

    @property
    def output_schema(self) -> pa.Schema:
        """The schema every committed Parquet file of this pipeline has."""
        final = self.record_schema
        names = list(self.columns) if self.columns else [f.name for f in final if f.name not in HIDDEN]
        return pa.schema([final.field(n) for n in names])

    def _check(self) -> list[pa.Schema]:
        columns: dict[str, pa.DataType] = {f.name: f.type for f in self.source.schema}
        schemas = [enveloped(pa.schema(list(columns.items())))]
        seen: set[str] = set()
        for position, stage in enumerate(self.stages, start=1):
            name = stage.stage_name
            if name in seen:
                raise PipelineError(f"two stages are named {name!r}; give one a distinct name")
            seen.add(name)
            _check_resources(stage)
            for column in stage.needs:
                if column not in columns:
                    raise PipelineError(
                        f"stage {name} (#{position}) needs column {column!r}, which no earlier "
                        f"stage provides (available: {', '.join(columns)})"
                    )
            for column in stage.drops:
                if column in self.keys:
                    raise PipelineError(f"stage {name} may not drop key column {column!r}")
                if column not in columns and column not in stage.adds:
                    raise PipelineError(f"stage {name} drops column {column!r}, which does not exist")
            for column, dtype in stage.adds.items():
                if column in self.keys:
                    raise PipelineError(f"stage {name} may not overwrite key column {column!r}")
                if not isinstance(dtype, pa.DataType):
                    raise PipelineError(f"stage {name}: column {column!r} needs an Arrow type")
                columns[column] = dtype
            for column in stage.drops:
                columns.pop(column, None)
            schemas.append(enveloped(pa.schema(list(columns.items()))))
        for column in list(self.columns or []) + list(_schema_columns(self.schema)):
            if column not in columns:
                raise PipelineError(
                    f"output column {column!r} is produced by no stage (available: {', '.join(columns)})"
                )
        if "ds" in (self.columns or [c for c in columns if c not in HIDDEN]):
            # Before, such a run committed, and every reader of the output failed on it:
            # headrace.read (`duplicate field names`), Spark (a data column named as the
            # partition column), pyarrow.dataset with hive partitioning.
            raise PipelineError("output column 'ds' is the output's partition column (its folders are ds=YYYY-MM-DD, and "
                                "readers add ds from them): rename it, or leave it out of the output's columns")
        return schemas

    def explain(self) -> str:
        """The plan as text: stages, pools, resources, batch sizes, schema and sink."""
        lines = [f"pipeline {self.name}", f"  source  {self.source.describe()}  -> {', '.join(self.keys)}"]
        for index, stage in enumerate(self.stages, start=1):
            lines.append(f"  {index:>2}. {stage.stage_name:<16} {_pool(stage):<22} {_resources(stage)}")
            contract = []
            if stage.needs:
                contract.append("needs " + ", ".join(stage.needs))
            if stage.adds:
                contract.append("adds " + ", ".join(f"{c}: {t}" for c, t in stage.adds.items()))
            if stage.drops:
                contract.append("drops " + ", ".join(stage.drops))
            if contract:
                lines.append("      " + "; ".join(contract))
            extra = {k: v for k, v in stage.settings().items() if k not in _SHOWN}
            if extra:
                lines.append("      settings " + ", ".join(f"{k}={v!r}" for k, v in extra.items()))
            pool = next((s for s in self.stages[index:] if s.gpus or s.stateful), None)
            if not stage.fuse and pool is not None:
                # headrace.ray_adapter.cut_rows, told before the cluster is known
                rows, gpu_rows = pool.call_size(False) or CUT_ROWS, pool.call_size(True) or CUT_ROWS
                on_gpu = f"; {gpu_rows} on a GPU" if pool.gpus and gpu_rows != rows else ""
                lines.append(f"      output cut into blocks of {pool.stage_name}'s call size ({rows} rows{on_gpu})")
        if self.schema is not None:
            schema_name = getattr(self.schema, "name", None) or "schema"
            lines.append(f"  schema  {schema_name}: {', '.join(_schema_columns(self.schema))}")
        lines.append(f"  sink    {self.sink.describe()}")
        lines.append(f"  gate    at most {self.max_quarantine_fraction:.0%} of inputs only in the quarantine")
        lines.append("  output  " + ", ".join(f"{f.name}: {f.type}" for f in self.output_schema))
        return "\n".join(lines)


# Settings explain() prints on a stage's own line already.
_SHOWN = {"name", "needs", "adds", "drops", "batch_size", "cpus", "gpus", "memory", "concurrency", "batch_format"}


def _schema_columns(schema: Any) -> list[str]:
    return list(getattr(schema, "columns", {}) or {})


def _check_resources(stage: Stage) -> None:
    name = stage.stage_name
    if not (0 <= stage.cpus < math.inf and 0 <= stage.gpus < math.inf):  # NaN and infinity too
        raise PipelineError(f"stage {name}: cpus and gpus must be finite numbers, not negative "
                            f"(cpus={stage.cpus}, gpus={stage.gpus})")
    if stage.gpus > 1 and stage.gpus != int(stage.gpus):
        raise PipelineError(f"stage {name}: gpus above 1 must be a whole number, got {stage.gpus}")
    if stage.batch_size is not None and stage.batch_size < 1:
        raise PipelineError(f"stage {name}: batch_size must be at least 1")
    # 0 was taken as "use batch_size" and a negative number as the batch size on a GPU
    if stage.gpu_batch_size is not None and stage.gpu_batch_size < 1:
        raise PipelineError(f"stage {name}: gpu_batch_size must be at least 1 (or None: batch_size)")
    if stage.memory is not None and not stage.memory > 0:
        raise PipelineError(f"stage {name}: memory must be a number of bytes above 0 (or None)")
    if stage.batch_format not in BATCH_FORMATS:
        raise PipelineError(f"stage {name}: batch_format must be one of {', '.join(BATCH_FORMATS)}")
    bounds = stage.pool_bounds()
    if isinstance(stage.concurrency, tuple) and len(stage.concurrency) not in (2, 3):
        raise PipelineError(f"stage {name}: concurrency must be n, (min, max) or (min, max, initial)")
    if bounds is not None and not (1 <= bounds[0] <= bounds[1]):
        raise PipelineError(f"stage {name}: concurrency must be n >= 1 or (min, max) with 1 <= min <= max")
    initial = stage.pool_initial()
    if initial is not None and not (bounds[0] <= initial <= bounds[1]):
        raise PipelineError(f"stage {name}: the initial pool size must lie between min and max")
    if stage.gpus and not stage.stateful:
        raise PipelineError(f"stage {name} asks for GPUs but has no setup(); GPU stages run on actors")


def _pool(stage: Stage) -> str:
    bounds = stage.pool_bounds()
    if stage.stateful:
        size = "auto" if bounds is None else (f"{bounds[0]}" if bounds[0] == bounds[1] else f"{bounds[0]}..{bounds[1]}")
        initial = stage.pool_initial()
        return f"actors {size}" + (f" (start {initial})" if initial is not None else "")
    return "tasks" if bounds is None else f"tasks <= {bounds[1]}"


def _resources(stage: Stage) -> str:
    parts = [f"cpus={stage.cpus:g}"]
    if stage.gpus:
        parts.append(f"gpus={stage.gpus:g}")
    if stage.memory:
        parts.append(f"memory={stage.memory / 2**30:.1f}GiB")
    parts.append(f"batch={stage.batch_size or 'block'}")
    if stage.batch_format != "arrow":
        parts.append(stage.batch_format)
    return " ".join(parts)
