"""Reading what runs committed: only the files the ``_SUCCESS`` manifests list.

A glob over the output folder can see staged, half-published or superseded files on an
object store (see headrace.commit); the manifests never do. Works on any fsspec store.
"""

from __future__ import annotations

import json
import posixpath
from typing import Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

MANIFEST = "_SUCCESS"


def dataset(output: str, ds: str | None = None, storage_options: dict | None = None) -> pads.Dataset:
    """The committed Parquet files of one date (``ds``) or of every date, as a pyarrow
    Dataset with a ``ds`` column."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    root = root.rstrip("/")
    fs.invalidate_cache()
    if ds is not None:
        manifests = [posixpath.join(root, f"ds={ds}", MANIFEST)]
        if not fs.exists(manifests[0]):
            raise FileNotFoundError(f"{output}: ds={ds} is not committed (no {MANIFEST})")
    else:
        manifests = sorted(fs.glob(posixpath.join(root, "ds=*", MANIFEST)))
        if not manifests:
            raise FileNotFoundError(f"{output}: no committed partition (no ds=*/{MANIFEST})")
    paths = []
    for manifest in manifests:
        document = json.loads(fs.cat_file(manifest))
        folder = posixpath.dirname(manifest)
        paths += [posixpath.join(folder, entry["path"]) for entry in document["files"]]
    partitioning = pads.partitioning(pa.schema([("ds", pa.string())]), flavor="hive")
    return pads.dataset(paths, filesystem=PyFileSystem(FSSpecHandler(fs)), format="parquet",
                        partitioning=partitioning, partition_base_dir=root)


def partition_status(output: str, ds: str, storage_options: dict | None = None) -> tuple[bool, str]:
    """(whether ``ds`` is committed, one line saying so): what a sensor needs."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    root = root.rstrip("/")
    fs.invalidate_cache()
    manifest = posixpath.join(root, f"ds={ds}", MANIFEST)
    if fs.exists(manifest):
        m = json.loads(fs.cat_file(manifest))
        counts = m.get("counts", {})
        return True, (
            f"{output} ds={ds} committed by run {m.get('run_id')} of {m.get('pipeline')} "
            f"(started {m.get('started_at')}): {counts.get('output', 0):,} rows, "
            f"{counts.get('quarantined', 0):,} quarantined, from {counts.get('input', 0):,} inputs"
        )
    failed = posixpath.join(root, "_staging", f"ds={ds}", "_FAILED")
    if fs.exists(failed):
        reason = json.loads(fs.cat_file(failed)).get("reason", "")
        return False, f"{output} ds={ds} is not committed: its last run was refused: {reason}"
    return False, f"{output} ds={ds} is not committed"


def read(output: str, ds: str | None = None, columns: Sequence[str] | None = None,
         storage_options: dict | None = None) -> pa.Table:
    """The committed rows of one date or of every date, with a ``ds`` column."""
    return dataset(output, ds, storage_options).to_table(columns=list(columns) if columns else None)


def scan(output: str, ds: str | None = None, storage_options: dict | None = None):
    """The committed rows as a polars LazyFrame (nothing is read until it is collected)."""
    import polars as pl

    return pl.scan_pyarrow_dataset(dataset(output, ds, storage_options))
