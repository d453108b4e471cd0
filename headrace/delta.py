"""Delta Lake output: the same staged write tasks, one Delta transaction per run.

The table lives at ``url``, partitioned by ``ds``. A run stages its Parquet files under
``_staging/ds=D/`` inside the table folder, where Delta readers never look (the log does
not name them, and ``_`` folders are hidden). To publish, the driver copies them into
``ds=D/`` under names unique to the run, then commits one transaction that removes every
file of partition ``ds=D`` and adds the new ones: the commit point, atomic for every
Delta reader (polars ``read_delta``, DuckDB, Spark). Then it writes ``ds=D/_SUCCESS``
(the manifest, for ``headrace status``/``headrace.read``) and drops the staging area.
Old files stay on disk for time travel until you VACUUM the table.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import random
import time
from dataclasses import dataclass

import pyarrow as pa

from headrace.commit import Layout, copy_staged, sweep
from headrace.errors import ConfigError
from headrace.sink import ParquetSink
from headrace.staging import MANIFEST

log = logging.getLogger("headrace")


@dataclass(frozen=True)
class DeltaSink(ParquetSink):
    """A Delta Lake table at ``url`` (local, s3://, gs://), partitioned by ``ds``."""

    format = "delta"
    unique_names = True  # older table versions still name the files a run replaces

    def describe(self) -> str:
        return f"delta {self.url} partitioned by ds  (quarantine: _quarantine/ds={{ds}} as Parquet)"

    def table_uri(self, ds: str) -> str:
        return self.url.replace("{ds}", ds).removeprefix("file://")

    def delta_options(self) -> dict[str, str]:
        """delta-rs reads credentials from the environment, and from ``headrace.storage_options``
        translated to its own keys (it does not read fsspec's: a table on MinIO whose endpoint
        and keys were given there failed at its first read, looking for an instance role); an
        http endpoint (an emulator) must be allowed, and S3 commits use conditional PUTs
        instead of a lock service."""
        if not self.url.startswith("s3://"):
            return {}
        import fsspec.config

        options = {"aws_conditional_put": "etag"}
        given = fsspec.config.conf.get("s3", {})
        region = (given.get("client_kwargs") or {}).get("region_name")
        for key, value in (("AWS_ENDPOINT_URL", given.get("endpoint_url")), ("AWS_ACCESS_KEY_ID", given.get("key")),
                           ("AWS_SECRET_ACCESS_KEY", given.get("secret")), ("AWS_SESSION_TOKEN", given.get("token")),
                           ("AWS_REGION", region)):
            if value:
                options[key] = str(value)
        if given.get("anon"):
            options["AWS_SKIP_SIGNATURE"] = "true"
        endpoint = options.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL", "")
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        return options

    def check_schema(self, ds: str, schema: pa.Schema) -> None:
        """An existing table whose schema differs from what the run writes is exit 2 before
        the run starts, as Spark refuses such a write without `overwriteSchema`: delta-rs
        took the run's schema as the table's, leaving the other dates' files under a
        schema that no longer describes them (a column's type changed, one dropped)."""
        from deltalake import DeltaTable, Schema
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.table_uri(ds), storage_options=self.delta_options())
        except TableNotFoundError:
            return
        have = {f.name: str(f.type) for f in table.schema().fields}
        want = {f.name: str(f.type) for f in Schema.from_arrow(schema.append(pa.field("ds", pa.string()))).fields}
        if have == want:
            return
        changes = [f"{n}: {have[n]} -> {want[n]}" for n in want if n in have and have[n] != want[n]]
        changes += [f"{n} added" for n in want if n not in have] + [f"{n} dropped" for n in have if n not in want]
        raise ConfigError(f"the Delta table {self.url} has another schema than this run writes ({'; '.join(changes)}); "
                          "its other dates were written with it: write to a new table, or convert this one first")

    def publish(self, area, manifest: dict, run: dict, ds: str, files: Layout, schema: pa.Schema) -> None:
        from deltalake import Schema
        from deltalake.transaction import AddAction

        partition, quarantine = self.partition(ds), self.quarantine(ds)
        copy_staged(area, partition, quarantine, files)
        now = int(time.time() * 1000)
        adds = [
            AddAction(path=f"ds={ds}/{entry['path']}", size=entry["bytes"], partition_values={"ds": ds},
                      modification_time=now, data_change=True, stats=json.dumps({"numRecords": entry["rows"]}))
            for entry in files.files if entry["rows"]
        ]
        schema = Schema.from_arrow(schema.append(pa.field("ds", pa.string())))  # with the partition column
        commit_partition(self.table_uri(ds), self.delta_options(), schema, adds, ds)
        storage = area.storage
        storage.write_json(posixpath.join(partition, MANIFEST), manifest)
        sweep(storage, quarantine, set(files.quarantine_files))
        storage.remove(area.root, recursive=True, missing_ok=True)


COMMIT_ATTEMPTS = 10


def commit_partition(uri: str, options: dict[str, str], schema, adds: list, ds: str,
                     attempts: int = COMMIT_ATTEMPTS) -> int:
    """One transaction that makes ``adds`` the whole of partition ``ds`` (creating the table
    on its first commit); returns how many tries it took.

    Runs of other dates commit to the same log: delta-rs refuses a transaction when another
    landed since it read the table (`a concurrent transaction deleted data this operation
    read`; on a new table, `Protocol changed since last commit`), even where the two touch
    different partitions. Three dates committing at once failed 38 of 60 commits here,
    each a run that failed after all its work. The transaction is made again on the newer
    version, after a random pause: it replaces only ``ds``, which no other run may write
    (the date's lock), so what landed in between is kept."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
    from deltalake.transaction import create_table_with_add_actions

    for attempt in range(1, attempts + 1):
        try:
            try:
                table = DeltaTable(uri, storage_options=options)
            except TableNotFoundError:
                try:
                    create_table_with_add_actions(uri, schema, adds, mode="append", partition_by=["ds"],
                                                  storage_options=options)
                except DeltaError as exc:
                    # Another run's creation half done (its log folder made, its first
                    # version not yet): `SaveMode append is not allowed for create operation`.
                    raise CommitFailedError(f"creating the table met another run's creation: {exc}") from exc
            else:
                table.create_write_transaction(adds, mode="overwrite", schema=schema, partition_by=["ds"],
                                               partition_filters=[("ds", "=", ds)])
            return attempt
        except CommitFailedError as exc:
            if attempt == attempts:
                exc.add_note(f"the Delta commit of ds={ds} failed {attempts} times: other runs kept committing first")
                raise
            log.info("the Delta commit of ds=%s met another run's commit (%s); trying again", ds, exc)
            time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
    raise AssertionError("unreachable")
