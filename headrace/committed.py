"""Reading what runs committed: only the files the ``_SUCCESS`` manifests list.

A glob over the output folder can see staged, half-published or superseded files on an
object store (see headrace.commit); the manifests never do. Works on any fsspec store.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem as LocalFileSystemSpec
from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

from headrace.config import parse_ds
from headrace.lock import STALE_S, holder_gone
from headrace.storage import at_once, output_url, parquet_file, read_small

MANIFEST = "_SUCCESS"
READ_THREADS = 8  # files read at once: on a bucket each is a request or a few


def committed_files(output: str, ds: str | None = None,
                    storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str, list[tuple[str, str, int | None]]]:
    """The filesystem, the output's root on it, and (date, path, bytes) of every committed
    Parquet file of one date (``ds``) or of every date, as the manifests list them."""
    fs, root = fsspec.core.url_to_fs(output_url(output), **(storage_options or {}))
    root = root.rstrip("/")
    fs.invalidate_cache()
    if ds is not None:
        ds = parse_ds(ds, "ds")
        manifest = posixpath.join(root, f"ds={ds}", MANIFEST)
        documents = {manifest: _document(fs, manifest)}
        if documents[manifest] is None:
            raise FileNotFoundError(f"{output}: ds={ds} is not committed (no {MANIFEST})")
    else:
        documents = _manifests(fs, root)
        if not documents:
            raise FileNotFoundError(f"{output}: no committed partition (no ds=*/{MANIFEST})")
    files = []
    for manifest in sorted(documents):
        folder = posixpath.dirname(manifest)
        date = posixpath.basename(folder).removeprefix("ds=")
        files += [(date, posixpath.join(folder, entry["path"]), entry.get("bytes")) for entry in documents[manifest]["files"]]
    return fs, root, files


def _manifests(fs, root: str) -> dict[str, dict]:
    """Every date's manifest under ``root``, by path: the output's top level listed once,
    then the manifests fetched STORE_REQUESTS at a time (a date without one is not
    committed). On a bucket, a glob of `ds=*/_SUCCESS` listed each date's folder and then
    read the manifests one after another, each a HEAD and a GET: a year of dates took 50 s
    at 20 ms a request (benchmarks/committed_read.py)."""
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return {}
    manifests = [posixpath.join(entry["name"].rstrip("/"), MANIFEST) for entry in entries
                 if entry.get("type") == "directory" and posixpath.basename(entry["name"].rstrip("/")).startswith("ds=")]
    found = dict(zip(manifests, at_once(lambda path: _document(fs, path), manifests)))
    return {path: document for path, document in found.items() if document is not None}


def dataset(output: str, ds: str | None = None, storage_options: dict | None = None) -> pads.Dataset:
    """The committed Parquet files of one date (``ds``) or of every date, as a pyarrow
    Dataset with a ``ds`` column. On a local disk through Arrow's own filesystem: a scan
    through a Python one (fsspec) may still be releasing Python objects on Arrow's
    threads after it has returned, which aborts a process that exits at that moment
    (apache/arrow#34314); ``read`` avoids the scanner altogether."""
    fs, root, files = committed_files(output, ds, storage_options)
    filesystem = LocalFileSystem() if _plain_local(fs) else PyFileSystem(FSSpecHandler(fs))
    partitioning = pads.partitioning(pa.schema([("ds", pa.string())]), flavor="hive")
    return pads.dataset([path for _, path, _ in files], filesystem=filesystem, format="parquet",
                        partitioning=partitioning, partition_base_dir=root)


def _plain_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Plain local files, which Arrow reads itself (a subclass of fsspec's local filesystem
    may do more than read files, and keeps its own reads)."""
    return type(fs) is LocalFileSystemSpec


def partition_status(output: str, ds: str, storage_options: dict | None = None) -> tuple[bool, str]:
    """(whether ``ds`` is committed, one line saying so): what a sensor needs."""
    fs, root = fsspec.core.url_to_fs(output_url(output), **(storage_options or {}))
    root = root.rstrip("/")
    fs.invalidate_cache()
    manifest = posixpath.join(root, f"ds={ds}", MANIFEST)
    m = _document(fs, manifest)
    if m is not None:
        counts = m.get("counts", {})
        return True, (
            f"{output} ds={ds} committed by run {m.get('run_id')} of {m.get('pipeline')} "
            f"(started {m.get('started_at')}): {counts.get('output', 0):,} rows, "
            f"{counts.get('quarantined', 0):,} quarantined, from {counts.get('input', 0):,} inputs"
        )
    refused = _document(fs, posixpath.join(root, "_staging", f"ds={ds}", "_FAILED"))
    if refused is not None:
        reason = refused.get("reason", "")
        return False, f"{output} ds={ds} is not committed: its last run was refused: {reason}"
    working = _lock_holder(fs, posixpath.join(root, "_staging", f"ds={ds}.lock"))
    return False, f"{output} ds={ds} is not committed" + (f": {working}" if working else "")


def _document(fs, path: str) -> dict | None:
    """The JSON document at ``path``; None where there is none (one request, not a look-up
    and then a read)."""
    try:
        return json.loads(read_small(fs, path))
    except FileNotFoundError:
        return None


def _lock_holder(fs, path: str) -> str:
    """Who holds the date's lock (headrace.lock), in words: a run working on the date, or
    one whose heartbeat stopped (killed; its retry takes the lock over); empty if none."""
    try:
        holder = json.loads(read_small(fs, path))
    except (FileNotFoundError, ValueError):
        return ""
    beat = float(holder.get("beat") or 0.0)
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(holder.get("since") or beat)))
    who = f"run {holder.get('run_id')}, pid {holder.get('pid')} on {holder.get('host')}, since {since}"
    ago = time.time() - beat
    if not holder_gone(holder):
        return f"a run is working on it ({who}; last heartbeat {ago:.0f} s ago)"
    stopped = f"no heartbeat for {ago / 60:.0f} min" if ago >= STALE_S else "its process is gone"
    return f"a run left its lock ({who}; {stopped}): the next run takes it over and resumes what it staged"


def read(output: str, ds: str | None = None, columns: Sequence[str] | None = None,
         storage_options: dict | None = None) -> pa.Table:
    """The committed rows of one date or of every date, with a ``ds`` column.

    Files are read several at once on Python threads: on a local disk by Arrow's own
    reader (only the columns asked for); on other stores fetched whole and parsed from
    memory Arrow owns (``storage.parquet_file``). Arrow is never handed a Python file:
    its dataset scanner over a Python filesystem lets go of Python objects on its own
    threads after returning, and a script that exits just then aborts (SIGABRT;
    apache/arrow#34314). A scheduler's task reading the output and exiting at once failed
    about half the time."""
    fs, _, files = committed_files(output, ds, storage_options)
    # One column may be given as its name (before, "text" was read as columns t, e, x, t);
    # [] means no column (the rows are still counted), None every column.
    wanted = [columns] if isinstance(columns, str) else None if columns is None else list(columns)
    stored = [name for name in wanted if name != "ds"] if wanted is not None else None

    local = _plain_local(fs)  # Arrow's own reader, only the columns asked for

    # A file the manifest says is smaller than s3fs's block is fetched in one GET (read_small):
    # asked for a whole object, s3fs first asks its size (a HEAD), to fetch a large one in parts.
    block = getattr(fs, "default_block_size", None) or 0

    def fetch(path: str, size: int | None) -> bytes:
        return read_small(fs, path) if size is not None and size <= block else fs.cat_file(path)

    def one(item: tuple[str, str, int | None]) -> tuple[pa.Table, list[str]]:
        date, path, size = item
        if local:
            parquet = pq.ParquetFile(path)
        elif stored is not None and size is not None and size > COLUMNS_APART:
            parquet = _columns_of(fs, path, size, set(stored))
        else:
            parquet = parquet_file(fetch(path, size))
        names = parquet.schema_arrow.names
        # A column that only some dates have is null in the others, as with every column.
        table = parquet.read(columns=None if stored is None else [n for n in stored if n in names])
        return table.append_column("ds", pa.array([date] * table.num_rows, pa.string())), names

    read = at_once(one, files, READ_THREADS)
    if stored:
        present = {name for _, names in read for name in names}
        missing = [name for name in stored if name not in present]
        if missing:
            raise KeyError(f"{output} has no column {', '.join(map(repr, missing))}: its columns are "
                           f"{', '.join(sorted(present))}, and ds")
    try:
        table = pa.concat_tables([t for t, _ in read], promote_options="default")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise type(exc)(f"{output}: {_type_changes([(date, t) for (date, *_), (t, _) in zip(files, read)]) or exc}") from exc
    return table.select(wanted) if wanted is not None else table


COLUMNS_APART = 8 << 20  # a larger committed file on a store is fetched column by column when columns are asked
FOOTER_READ = 64 << 10  # bytes of a Parquet file's end fetched to find its footer


def _columns_of(fs, path: str, size: int, names: set[str]) -> pq.ParquetFile:
    """The Parquet file at ``path`` (``size`` bytes, as its manifest says) with only its
    footer and the chunks of the columns ``names`` fetched (one ranged GET each, at once),
    in memory Arrow owns, the rest of it never read: one column of a year of 30 MB
    embedding files is not 11 GB fetched."""
    tail = fs.cat_file(path, start=max(0, size - FOOTER_READ))
    if tail[-4:] != b"PAR1" or len(tail) != min(size, FOOTER_READ):
        return parquet_file(fs.cat_file(path))  # not what the manifest says: read it whole, as before
    length = int.from_bytes(tail[-8:-4], "little") + 8
    if length > len(tail):
        tail = fs.cat_file(path, start=size - length)
    data = pa.allocate_buffer(size)
    view = memoryview(data).cast("B")
    view[size - len(tail):] = tail
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    starts, ends = [], []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            path_in_schema = chunk.path_in_schema  # `embedding.list.element`; a name may hold dots itself
            if any(path_in_schema == name or path_in_schema.startswith(name + ".") for name in names):
                start = chunk.dictionary_page_offset if chunk.has_dictionary_page and chunk.dictionary_page_offset else \
                    chunk.data_page_offset
                starts.append(start)
                ends.append(start + chunk.total_compressed_size)
    if starts:
        for start, piece in zip(starts, fs.cat_ranges([path] * len(starts), starts, ends, on_error="raise")):
            view[start:start + len(piece)] = piece
    return pq.ParquetFile(pa.BufferReader(data))


def _type_changes(tables: list[tuple[str, pa.Table]]) -> str:
    """Which columns hold another type in which dates, in words (a Parquet output written
    before runs were refused for it: ``ParquetSink.check_schema``)."""
    seen: dict[str, dict[str, list[str]]] = {}
    for date, table in tables:
        for field in table.schema:
            dates = seen.setdefault(field.name, {}).setdefault(str(field.type), [])
            if date not in dates:
                dates.append(date)
    changes = [f"column {name!r} is " + " but ".join(
        f"{kind} in ds={dates[0]}" + (f" (and {len(dates) - 1} more dates)" if len(dates) > 1 else "")
        for kind, dates in sorted(kinds.items(), key=lambda item: min(item[1])))
        for name, kinds in seen.items() if len(kinds) > 1]
    return "; ".join(changes) + ": read the dates apart (ds=...), or write them again with one type" if changes else ""


def scan(output: str, ds: str | None = None, storage_options: dict | None = None):
    """The committed rows as a polars LazyFrame (nothing is read until it is collected)."""
    import polars as pl

    return pl.scan_pyarrow_dataset(dataset(output, ds, storage_options))
