"""What a write task does: stage its rows as Parquet files, then its progress file.

A PartWriter is made on the driver once the staging area is prepared, and never
changes; Ray ships copies of it to the write tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

import pyarrow.compute as pc

from headrace.envelope import EMPTY_TYPE, ERROR, WEIGHT, split_errors
from headrace.sink import QUARANTINE_SCHEMA, ParquetSink
from headrace.staging import StagedPart, StagingArea, error_counts, error_samples, unique_ids


@dataclass(frozen=True)
class PartWriter:
    sink: ParquetSink
    staging: str  # OUT/_staging/ds=D
    attempt: int
    run_id: str
    keys: tuple[str, ...]
    output_schema: pa.Schema
    row_id: str | None = None  # each row's own id where an input is not one record (Pipeline.row_id)

    def write(self, table: pa.Table, task_index: int) -> StagedPart:
        """Stage the enveloped rows of one write task; a retried task overwrites its own files."""
        area = StagingArea(self.sink.storage(), self.staging, self.sink.compression)
        part = StagedPart(name=f"part-{self.attempt:03d}-{task_index:05d}")
        id_column = self.keys[0]
        for key, weight in zip(table.column(id_column).to_pylist(), table.column(WEIGHT).to_pylist()):
            part.weights[key] = part.weights.get(key, 0) + weight
        healthy, failed = split_errors(table)
        if failed.num_rows:
            # Inputs that hold no records (ROW_ERROR = NO_RECORDS): accounted, not quarantined.
            empty = pc.equal(failed.column(ERROR).combine_chunks().field("error_type"), EMPTY_TYPE)
            part.empty_ids = unique_ids(failed.filter(empty).column(id_column))
            failed = failed.filter(pc.invert(empty))
        if healthy.num_rows:
            data = healthy.select(self.output_schema.names).cast(self.output_schema)
            part.data_bytes = area.storage.write_parquet(data, area.path("data", part.file), area.compression)
            part.data_rows = data.num_rows
            part.data_ids = unique_ids(healthy.column(id_column))
        if failed.num_rows:
            quarantine = self.quarantine_rows(failed)
            area.storage.write_parquet(quarantine, area.path("quarantine", part.file), area.compression)
            part.quarantine_rows = quarantine.num_rows
            part.quarantine_ids = unique_ids(failed.column(id_column))
            part.errors, part.samples = error_counts(quarantine), error_samples(quarantine)
        # Last: the progress file is what makes this task's files count.
        area.storage.write_json(area.path("progress", part.progress), part.document())
        return replace(part, weights={})  # the driver needs no weights: they are for resume

    def quarantine_rows(self, failed: pa.Table) -> pa.Table:
        """The quarantine's columns; ``record_id`` is the row's own id where it has one (a
        table file's row), else its input's."""
        error = failed.column(ERROR).combine_chunks()
        n = failed.num_rows
        record_id = failed.column(self.keys[0])
        if self.row_id in failed.column_names:
            record_id = pc.coalesce(failed.column(self.row_id).cast(pa.string()), record_id)
        return pa.Table.from_arrays(
            [
                failed.column("source"),
                record_id,
                error.field("stage"),
                error.field("error_type"),
                error.field("message"),
                error.field("traceback"),
                pa.array([self.run_id] * n, pa.string()),
            ],
            schema=QUARANTINE_SCHEMA,
        )
