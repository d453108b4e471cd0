"""Running a stage on a batch: isolate bad records, and tell a broken stage from bad data.

A stage only ever sees healthy rows. When process() raises, the batch is split in
halves until the failing records are isolated, so one bad record never costs its
batch-mates; each failing record becomes an error row keyed by the source columns.

A stage that fails on every record is not facing bad data: it is broken (a NameError,
a missing model). ``FailureWatch`` counts, per stage, the records that failed with
each exception type before the stage succeeded on any record; at ``limit`` of one type
the stage is declared broken and the run stops (``StageBroken``), instead of
quarantining every input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from headrace.envelope import (
    EMPTY_TYPE, NO_RECORDS, ROW_ERROR, WEIGHT, carry_errors, conform, describe_exception, error_rows, share_weights, split_errors,
)
from headrace.errors import StageBroken
from headrace.retry import retrying
from headrace.stage import Stage

DEFAULT_BROKEN_AFTER = 32


class Watch(Protocol):
    def failed(self, stage: str, error_type: str, message: str, traceback: str) -> tuple[str, str] | None: ...

    def succeeded(self, stage: str) -> None: ...


@dataclass
class FailureWatch:
    """Counts failures per stage and exception type until the stage first succeeds.

    ``failed`` returns the reason the stage is broken once ``limit`` records failed with
    one exception type and none succeeded (``limit`` 0: never). A success anywhere in
    the run clears the stage for good: from then on failures are bad records.
    """

    limit: int = DEFAULT_BROKEN_AFTER
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    first: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    healthy: set[str] = field(default_factory=set)
    broken: dict[str, tuple[str, str]] = field(default_factory=dict)

    def failed(self, stage: str, error_type: str, message: str, traceback: str) -> tuple[str, str] | None:
        if stage in self.broken:
            return self.broken[stage]
        if stage in self.healthy or self.limit <= 0:
            return None
        self.first.setdefault(stage, (error_type, message, traceback))
        key = (stage, error_type)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] < self.limit:
            return None
        first_type, first_message, first_trace = self.first[stage]
        reason = (
            f"stage {stage} is broken: {error_type}: {message.splitlines()[0] if message else ''} "
            f"({self.counts[key]} records failed with {error_type} and none succeeded; "
            f"limit headrace.broken_stage_after={self.limit})"
        )
        self.broken[stage] = (reason, f"first failure ({first_type}: {first_message}):\n{first_trace}")
        return self.broken[stage]

    def succeeded(self, stage: str) -> None:
        self.healthy.add(stage)

    def setup_failed(self, stage: str, reason: str, traceback: str) -> None:
        """A stage that cannot start is broken at once."""
        self.broken.setdefault(stage, (reason, traceback))


def apply_stage(
    stage: Stage, table: pa.Table, out_schema: pa.Schema, keys: tuple[str, ...], watch: Watch | None = None
) -> pa.Table:
    """Run ``stage`` on the healthy rows of ``table``; pass earlier error rows through.

    ``table`` and the result are enveloped (see headrace.envelope); ``out_schema`` is
    the enveloped schema the stage emits. Raises StageBroken when ``watch`` says so.
    """
    healthy, failed = split_errors(table)
    parts = _run_isolated(stage, healthy, out_schema, keys, watch) if healthy.num_rows else []
    if failed.num_rows:
        parts.append(carry_errors(failed, out_schema))
    if not parts:
        return out_schema.empty_table()
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _run_isolated(stage: Stage, rows: pa.Table, out_schema: pa.Schema, keys: tuple[str, ...], watch) -> list[pa.Table]:
    try:
        batch = rows.drop_columns([WEIGHT])
        result = retrying(lambda: stage.call(batch), stage.retries, stage.retry_backoff_s)
    except Exception as exc:  # noqa: BLE001 - a record-level failure is data, until the watch says otherwise
        if rows.num_rows == 1:
            error_type, message, trace = describe_exception(exc)
            broken = watch.failed(stage.stage_name, error_type, message, trace) if watch is not None else None
            if broken:
                raise StageBroken(*broken) from None
            return [error_rows(rows, out_schema, keys, stage.stage_name, error_type, message, trace)]
        middle = rows.num_rows // 2
        return _run_isolated(stage, rows.slice(0, middle), out_schema, keys, watch) + _run_isolated(
            stage, rows.slice(middle), out_schema, keys, watch
        )
    if watch is not None:
        watch.succeeded(stage.stage_name)
    weights = share_weights(rows, result, keys[0])
    if ROW_ERROR not in result.column_names:
        return [conform(result, out_schema, stage.stage_name, weights)]
    return _row_errors(result, weights, out_schema, keys, stage.stage_name)


def _row_errors(result: pa.Table, weights: pa.Array, out_schema: pa.Schema, keys: tuple[str, ...], stage: str):
    """Rows the stage marked in ROW_ERROR become error rows, with their share of the weight."""
    marked = pc.is_valid(result.column(ROW_ERROR))
    rows = result.drop_columns([ROW_ERROR])
    if not pc.any(marked).as_py():
        return [conform(rows, out_schema, stage, weights)]
    healthy = pc.invert(marked)
    out = [conform(rows.filter(healthy), out_schema, stage, weights.filter(healthy))]
    empty = pc.fill_null(pc.equal(result.column(ROW_ERROR), NO_RECORDS), False)
    for which, error_type in ((pc.and_(marked, pc.invert(empty)), "BadRecord"), (empty, EMPTY_TYPE)):
        failed = result.filter(which).append_column(WEIGHT, weights.filter(which))
        if failed.num_rows:
            out.append(error_rows(failed, out_schema, keys, stage, error_type, failed.column(ROW_ERROR).to_pylist()))
    return out
