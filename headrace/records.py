"""Errors in-band: failed records travel as rows with an ``_error`` struct until the sink.

A stage only ever sees healthy rows. When process() raises, the batch is split in
halves until the failing records are isolated, so one bad record never costs its
batch-mates; each failing record becomes an error row keyed by the source columns.
"""

from __future__ import annotations

import errno
import logging
import time
import traceback as tb
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from headrace.stage import Stage

log = logging.getLogger("headrace")
T = TypeVar("T")

ERROR = "_error"
ERROR_TYPE = pa.struct(
    [
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("traceback", pa.string()),
    ]
)
# Every input record enters with FULL_WEIGHT; a stage shares each record's weight among
# the rows it makes of it (exactly, in integers). An input whose staged rows add up to
# FULL_WEIGHT is complete, which is what lets a killed run resume where it stopped.
WEIGHT = "_weight"
FULL_WEIGHT = 1 << 62
MAX_MESSAGE = 1000
MAX_TRACEBACK = 2000


class ContractError(RuntimeError):
    """A stage returned a batch that breaks its declared column contract (a bug, not data)."""


def with_error_column(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(ERROR, ERROR_TYPE))


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    message = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    if notes:
        message = f"{message} ({'; '.join(notes)})"
    frames = tb.format_exception(type(exc), exc, exc.__traceback__, limit=-4)
    return type(exc).__name__, message[:MAX_MESSAGE], "".join(frames)[-MAX_TRACEBACK:]


def error_rows(
    rows: pa.Table,
    schema: pa.Schema,
    keys: tuple[str, ...],
    stage: str,
    error_type: str,
    messages: list[str] | str,
    traceback: str = "",
) -> pa.Table:
    """Rows of ``schema`` (which ends in the error column) carrying only their keys and an error."""
    n = rows.num_rows
    if isinstance(messages, str):
        messages = [messages] * n
    error = pa.StructArray.from_arrays(
        [
            pa.array([stage] * n, pa.string()),
            pa.array([error_type] * n, pa.string()),
            pa.array(messages, pa.string()),
            pa.array([traceback] * n, pa.string()),
        ],
        fields=list(ERROR_TYPE),
    )
    columns = []
    for field in schema:
        if field.name == ERROR:
            columns.append(error)
        elif field.name in keys or (field.name == WEIGHT and WEIGHT in rows.column_names):
            columns.append(rows.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def split_errors(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(healthy rows without the error column, error rows)."""
    errors = table.column(ERROR)
    if errors.null_count == table.num_rows:
        return table.drop_columns([ERROR]), table.slice(0, 0)
    healthy = pc.is_null(errors)
    return table.filter(healthy).drop_columns([ERROR]), table.filter(pc.invert(healthy))


def conform(table: pa.Table, schema: pa.Schema, stage: str) -> pa.Table:
    """Select and cast the columns of ``schema`` (minus the error column) and add a null error column."""
    columns = []
    for field in schema:
        if field.name == ERROR:
            columns.append(pa.nulls(table.num_rows, ERROR_TYPE))
            continue
        if field.name not in table.column_names:
            raise ContractError(f"stage {stage} did not return its column {field.name!r}")
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ContractError(
                    f"stage {stage} returned column {field.name!r} as {column.type}, "
                    f"declared {field.type}: {exc}"
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def with_weights(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(WEIGHT, pa.int64()))


def apply_stage(stage: Stage, table: pa.Table, out_schema: pa.Schema, keys: tuple[str, ...]) -> pa.Table:
    """Run ``stage`` on the healthy rows of ``table``; pass earlier error rows through.

    ``out_schema`` is what the stage emits (error column included); when ``table``
    carries record weights, the result carries them too, shared among the new rows.
    """
    weighted = WEIGHT in table.column_names
    schema = with_weights(out_schema) if weighted else out_schema
    healthy, failed = split_errors(table)
    parts = _run_isolated(stage, healthy, out_schema, keys, weighted) if healthy.num_rows else []
    if failed.num_rows:
        parts.append(_carry_errors(failed, schema))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _run_isolated(
    stage: Stage, rows: pa.Table, out_schema: pa.Schema, keys: tuple[str, ...], weighted: bool
) -> list[pa.Table]:
    try:
        batch = rows.drop_columns([WEIGHT]) if weighted else rows
        result = retrying(lambda: stage.call(batch), stage.retries, stage.retry_backoff_s)
    except Exception as exc:  # noqa: BLE001 - any record-level failure is data
        if rows.num_rows == 1:
            error_type, message, trace = describe_exception(exc)
            schema = with_weights(out_schema) if weighted else out_schema
            return [error_rows(rows, schema, keys, stage.stage_name, error_type, message, trace)]
        middle = rows.num_rows // 2
        return _run_isolated(stage, rows.slice(0, middle), out_schema, keys, weighted) + _run_isolated(
            stage, rows.slice(middle), out_schema, keys, weighted
        )
    result = conform(result, out_schema, stage.stage_name)
    if weighted:
        result = result.append_column(WEIGHT, share_weights(rows, result, keys[0]))
    return [result]


def share_weights(inputs: pa.Table, outputs: pa.Table, id_column: str) -> pa.Array:
    """The weights of ``outputs``: each record's input weight split exactly among its output rows."""
    totals: dict[str, int] = {}
    for key, weight in zip(inputs.column(id_column).to_pylist(), inputs.column(WEIGHT).to_pylist()):
        totals[key] = totals.get(key, 0) + weight
    out_ids = outputs.column(id_column).to_pylist()
    counts: dict[str, int] = {}
    for key in out_ids:
        counts[key] = counts.get(key, 0) + 1
    seen: set[str] = set()
    weights = []
    for key in out_ids:
        total, count = totals.get(key, 0), counts[key]
        share = total // count
        if key not in seen:  # the first row takes the remainder
            share += total % count
            seen.add(key)
        weights.append(share)
    return pa.array(weights, pa.int64())


class TransientError(Exception):
    """Raise (or subclass) this in a stage for a failure worth retrying: a flaky service."""


# Failures that will not go away on retry, although they are OSErrors.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EBUSY}


def is_transient(exc: BaseException) -> bool:
    """Timeouts, dropped connections, 429 and 5xx answers: worth another try."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(status, int) and (status == 429 or 500 <= status < 600):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def retrying(operation: Callable[[], T], retries: int, backoff_s: float, what: str = "") -> T:
    """operation(), retried ``retries`` times with exponential backoff while it fails transiently.

    The final failure carries a note saying how often it was tried. ``what`` names the
    operation in that note and in a warning logged before each retry.
    """
    for attempt in range(retries + 1):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == retries or not is_transient(exc):
                if attempt:
                    prefix = f"{what}: " if what else ""
                    exc.add_note(f"{prefix}failed {attempt + 1} times; transient failures were retried")
                raise
            wait = min(backoff_s * 2**attempt, 30.0)
            if what:
                log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _carry_errors(failed: pa.Table, out_schema: pa.Schema) -> pa.Table:
    columns = []
    for field in out_schema:
        if field.name in failed.column_names and failed.schema.field(field.name).type == field.type:
            columns.append(failed.column(field.name))
        else:
            columns.append(pa.nulls(failed.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=out_schema)
