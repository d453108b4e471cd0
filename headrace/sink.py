"""The Parquet sink: where committed partitions and the quarantine live."""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from headrace.errors import PipelineError

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("record_id", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("traceback", pa.string()),
        ("run_id", pa.string()),
    ]
)


@dataclass(frozen=True)
class ParquetSink:
    """Parquet files under ``url``: ``ds=D/`` for data, ``_quarantine/ds=D/`` for error rows.

    ``url`` may contain ``{ds}``; it is expanded with the run's logical date.
    """

    url: str
    rows_per_file: int = 20_000
    compression: str = "zstd"

    def __post_init__(self) -> None:
        protocol = fsspec.core.split_protocol(self.url)[0]
        if protocol not in (None, "file", "local"):
            raise PipelineError(
                f"output {self.url!r}: only local paths are supported for output so far"
            )
        if self.rows_per_file < 1:
            raise PipelineError("rows_per_file must be at least 1")

    def root(self, ds: str) -> str:
        path = fsspec.core.strip_protocol(self.url.replace("{ds}", ds))
        return os.path.abspath(path)

    def partition(self, ds: str) -> str:
        return os.path.join(self.root(ds), f"ds={ds}")

    def quarantine(self, ds: str) -> str:
        return os.path.join(self.root(ds), "_quarantine", f"ds={ds}")

    def staging(self, ds: str, run_id: str) -> str:
        return os.path.join(self.root(ds), "_staging", f"ds={ds}", run_id)

    def describe(self) -> str:
        return f"parquet {self.url}/ds={{ds}}  (quarantine: _quarantine/ds={{ds}}, {self.rows_per_file} rows/file)"
