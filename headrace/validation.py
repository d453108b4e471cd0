"""Output contracts: a pandera (polars) schema checked on every batch before it is written.

Rows that violate the schema are not dropped: they become error rows whose message
names the failed check, and the sink puts them in the quarantine.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from headrace.envelope import WEIGHT, conform, error_rows, split_errors

ROW = "__row__"


def validate_batch(schema: Any, table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Check the healthy rows of ``table`` against ``schema``; failing rows become error rows."""
    from pandera.errors import SchemaError, SchemaErrors

    healthy, failed = split_errors(table)
    if healthy.num_rows == 0:
        return table
    frame = pl.from_arrow(healthy.drop_columns([WEIGHT]))
    try:
        schema.validate(frame, lazy=True)
        return table
    except SchemaErrors as exc:
        reasons = _reasons_by_row(exc.failure_cases, healthy.num_rows)
    except SchemaError as exc:  # a failure that is not tied to rows
        reasons = {i: [f"{exc}"] for i in range(healthy.num_rows)}
    name = f"schema:{getattr(schema, 'name', None) or 'output'}"
    bad = sorted(reasons)
    bad_mask = pa.array([i in reasons for i in range(healthy.num_rows)])
    good = healthy.filter(pc.invert(bad_mask))
    rejected = error_rows(
        healthy.take(bad),
        table.schema,
        keys,
        name,
        "SchemaError",
        ["; ".join(reasons[i]) for i in bad],
    )
    parts = [conform(good, table.schema, name, good.column(WEIGHT)), rejected]
    if failed.num_rows:
        parts.append(failed)
    return pa.concat_tables(parts)


def _reasons_by_row(failure_cases: pl.DataFrame, rows: int) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = defaultdict(list)
    for case in failure_cases.iter_rows(named=True):
        column = case.get("column")
        what = f"check {case['check']}" + (f" failed on column {column}" if column else " failed")
        value = case.get("failure_case")
        if value is not None and len(str(value)) < 80:
            what += f" (value {value})"
        index = case.get("index")
        targets = range(rows) if index is None else [int(index)]
        for row in targets:
            if what not in reasons[row]:
                reasons[row].append(what)
    return dict(reasons)

