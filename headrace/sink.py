"""The Parquet sink: where committed partitions and the quarantine live."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from headrace.errors import ConfigError, PipelineError
from headrace.storage import Storage, check_writable, output_url

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

    ``url`` may contain ``{ds}``; it is expanded with the run's logical date. A relative
    path is made absolute when the sink is made (on the driver). Files are
    written through fsspec (``storage_options`` go to the filesystem): a local or mounted
    disk, s3://, gs:// or any other fsspec store. See headrace.commit for how a partition
    is published on each.
    """

    url: str
    rows_per_file: int = 20_000
    compression: str = "zstd"
    storage_options: dict | None = None
    retries: int = 5  # transient storage failures retried per file operation
    retry_backoff_s: float = 0.2

    format = "parquet"
    unique_names = False  # whether published files carry the run id even on a local disk

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", output_url(self.url))
        if self.rows_per_file < 1:
            raise PipelineError("rows_per_file must be at least 1")

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """The output filesystem, made in the process that writes (a task, or the driver)."""
        protocol = fsspec.core.split_protocol(self.url)[0] or "file"
        return fsspec.filesystem(protocol, **(self.storage_options or {}))

    def storage(self) -> Storage:
        return Storage(self.filesystem(), self.retries, self.retry_backoff_s)

    def root(self, ds: str) -> str:
        """The output folder as a path of its filesystem (no protocol)."""
        return fsspec.core.strip_protocol(self.url.replace("{ds}", ds)).rstrip("/")

    def partition(self, ds: str) -> str:
        return posixpath.join(self.root(ds), f"ds={ds}")

    def quarantine(self, ds: str) -> str:
        return posixpath.join(self.root(ds), "_quarantine", f"ds={ds}")

    def staging(self, ds: str) -> str:
        return posixpath.join(self.root(ds), "_staging", f"ds={ds}")

    def check(self, ds: str, schema: pa.Schema) -> None:
        """What makes a run of ``ds`` unable to publish, found before it starts (ConfigError,
        exit 2): a local output it could not write (headrace.storage.check_writable), an
        output whose other dates hold another schema (check_schema)."""
        check_writable(self.storage(), self.root(ds))
        self.check_schema(ds, schema)

    def check_schema(self, ds: str, schema: pa.Schema) -> None:
        """A column whose type differs from the one the latest other committed date holds is
        exit 2 before the run: readers of more than one date fail on it (headrace.read:
        `ArrowTypeError: Unable to merge: Field words has incompatible types`) or misread it
        (pyarrow.dataset and Spark take one file's schema for all). A column added or left
        out is no such change: readers fill it with nulls where a date lacks it. An output
        whose URL holds `{ds}` has a folder per date, and no such readers."""
        if "{ds}" in self.url:
            return
        storage = self.storage()
        root = self.root(ds)
        dates = sorted((name[3:] for name in storage.listdir(root) if name.startswith("ds=") and name[3:] != ds),
                       reverse=True)
        for other in dates:
            manifest = posixpath.join(root, f"ds={other}", "_SUCCESS")
            if not storage.exists(manifest):
                continue
            have = {c["name"]: c["type"] for c in storage.read_json(manifest).get("schema") or []}
            changed = [f"{f.name}: {have[f.name]} -> {f.type}" for f in schema if f.name in have and have[f.name] != str(f.type)]
            if changed:
                raise ConfigError(
                    f"the output {self.url} holds another type in a column this run writes ({'; '.join(changed)}; "
                    f"committed ds={other} and maybe earlier dates): readers of more than one date would fail or misread "
                    "it. Write to a new output (and backfill it), or keep the column's type")
            return

    def publish(self, area, manifest: dict, run: dict, ds: str, files, schema: pa.Schema) -> None:
        """Make the staged partition visible (headrace.commit)."""
        from headrace.commit import publish

        publish(area, manifest, run, self.partition(ds), self.quarantine(ds), files)

    def url_of(self, path: str) -> str:
        """A path of this sink's filesystem as readers elsewhere name it: a plain path on a
        local disk, a URL (s3://bucket/...) on a store."""
        return self.storage().url(path)

    def describe(self) -> str:
        return f"parquet {self.url}/ds={{ds}}  (quarantine: _quarantine/ds={{ds}}, {self.rows_per_file} rows/file)"


def output_sink(url: str, output_format: str = "parquet", **settings) -> ParquetSink:
    """The sink for ``output_format``: ``parquet`` (ParquetSink) or ``delta`` (DeltaSink)."""
    if output_format == "parquet":
        return ParquetSink(url, **settings)
    if output_format == "delta":
        from headrace.delta import DeltaSink

        return DeltaSink(url, **settings)
    raise PipelineError(f"output_format {output_format!r}: expected parquet or delta")
