"""The envelope every record travels in between source and sink: an error and a weight.

Besides its data columns, every batch in the graph carries two hidden columns:

- ``_error``: null for a healthy row; for a failed record, a struct of stage,
  error_type, message and traceback. Later stages pass such rows through untouched
  and the sink writes them to the quarantine.
- ``_weight``: every input record enters with FULL_WEIGHT, and each stage shares a
  record's weight exactly (in integers) among the rows it makes of it. An input whose
  staged rows add up to FULL_WEIGHT is complete: that is what lets a killed run resume.
"""

from __future__ import annotations

import traceback as tb

import pyarrow as pa
import pyarrow.compute as pc

ERROR = "_error"
ERROR_TYPE = pa.struct(
    [
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("traceback", pa.string()),
    ]
)
WEIGHT = "_weight"
# A stage may return this string column: non-null marks a row it made but could not fill
# (a malformed line of a table file): that row is quarantined with the message, alone.
ROW_ERROR = "_row_error"
# ... or, as ROW_ERROR's value on the one row it returns for an input, that the input holds
# no records at all (a byte range of a table file in which no line or record starts):
# the input is then accounted as empty, in neither the output nor the quarantine.
NO_RECORDS = "(no records)"
EMPTY_TYPE = "NoRecords"  # the error type such a row travels with, from the stage to the sink
FULL_WEIGHT = 1 << 62
HIDDEN = (ERROR, WEIGHT)
MAX_MESSAGE = 1000
MAX_TRACEBACK = 2000


class ContractError(RuntimeError):
    """A stage returned a batch that breaks its declared column contract (a bug, not data)."""


def enveloped(schema: pa.Schema) -> pa.Schema:
    """``schema`` plus the error and weight columns."""
    return schema.append(pa.field(ERROR, ERROR_TYPE)).append(pa.field(WEIGHT, pa.int64()))


def data_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without the envelope's columns."""
    return pa.schema([f for f in schema if f.name not in HIDDEN])


def envelop(records: pa.Table) -> pa.Table:
    """Input records as they enter the graph: healthy, each with the full weight."""
    n = records.num_rows
    return records.append_column(ERROR, pa.nulls(n, ERROR_TYPE)).append_column(
        WEIGHT, pa.array([FULL_WEIGHT] * n, pa.int64())
    )


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message with notes, the last frames of the traceback), each bounded."""
    message = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    if notes:
        message = f"{message} ({'; '.join(notes)})"
    trace = tb.TracebackException(type(exc), exc, exc.__traceback__, limit=-4)
    _drop_repeats(trace)
    return type(exc).__name__, message[:MAX_MESSAGE], "".join(trace.format())[-MAX_TRACEBACK:]


def _drop_repeats(trace: tb.TracebackException) -> None:
    """Leave out of the chain the failures that the same error made while it was being
    isolated: a batch that failed, then its halves, then the record, each raised while the
    last was handled. A quarantined record's traceback showed the same error three times
    over (`During handling of the above exception, another exception occurred`)."""
    node = trace
    while node is not None:
        same = "".join(node.format_exception_only())
        context = node.__context__
        while context is not None and not node.__cause__ and "".join(context.format_exception_only()) == same:
            context = context.__context__
        node.__context__ = context
        node = node.__cause__ or node.__context__


def error_rows(
    rows: pa.Table,
    schema: pa.Schema,
    keys: tuple[str, ...],
    stage: str,
    error_type: str,
    messages: list[str] | str,
    traceback: str = "",
) -> pa.Table:
    """Error rows of the enveloped ``schema``: each keeps its keys and its weight, nothing else
    (a key that ``rows`` do not have yet, such as a row id a reader adds, is null)."""
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
        elif (field.name in keys and field.name in rows.column_names) or field.name == WEIGHT:
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


def conform(table: pa.Table, schema: pa.Schema, stage: str, weights: pa.Array) -> pa.Table:
    """The data columns of the enveloped ``schema``, cast; a null error column; ``weights``."""
    columns = []
    for field in schema:
        if field.name == ERROR:
            columns.append(pa.nulls(table.num_rows, ERROR_TYPE))
            continue
        if field.name == WEIGHT:
            columns.append(weights)
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


def carry_errors(failed: pa.Table, schema: pa.Schema) -> pa.Table:
    """Error rows of an earlier stage, in the enveloped ``schema`` of a later one."""
    columns = []
    for field in schema:
        if field.name in failed.column_names and failed.schema.field(field.name).type == field.type:
            columns.append(failed.column(field.name))
        else:
            columns.append(pa.nulls(failed.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def share_weights(inputs: pa.Table, outputs: pa.Table, id_column: str) -> pa.Array:
    """The weights of ``outputs``: each record's input weight split exactly among its output rows.

    Per id, integer division; the first row of an id takes the remainder, so the shares
    add up to the input's weight exactly.
    """
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
        if key not in seen:
            share += total % count
            seen.add(key)
        weights.append(share)
    return pa.array(weights, pa.int64())
