"""Table sources: records that are rows of Parquet, JSON Lines and CSV files, or the
documents of WARC and WET files.

A table file is not one record: a 2 GB shard would be one task and one quarantine entry.
``Tables`` lists *splits* instead, from file metadata only, and each split is one input
of the run (conservation, resume and the run report count splits; the rows a split makes
are shared its weight as any stage's rows are):

- Parquet: one split per row group (read from the footer);
- JSON Lines and CSV: byte ranges of ``split_bytes``; a split owns the lines that *start*
  inside its range (the reader of a range skips the line it begins in the middle of and
  finishes the last line it began), so every line belongs to exactly one split; a CSV row
  may span lines (a quoted field with line breaks): a split owns the rows that start
  between two boundaries found by reading back (``stages.tables._csv_boundary``);
- gzip-compressed text (``.gz``) cannot be cut: one split per file;
- WARC and WET (``.warc``, ``.warc.gz``, ``.wet``, ``.wet.gz``): byte ranges of
  ``split_bytes`` too, compressed or not: a split owns the records that start inside it
  (a ``.warc.gz`` holds one gzip member per record; ``stages.warc``).

``stages.tables.ReadTable`` reads a split into rows. Each row gets a stable ``record_id``:
a given id column, else the file URI plus the row's number in the file (Parquet) or the
byte offset of its line or WARC record (JSON Lines, CSV, WARC: a line's number is not
known without reading the file up to it).
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import fsspec
import pyarrow as pa

from headrace.errors import ConfigError
from headrace.source import Files, Listing, stable_id
from headrace.storage import absolute_url, refuse_special_file

FORMATS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl",
    ".json.gz": "jsonl",
    ".csv": "csv", ".csv.gz": "csv",
    ".warc": "warc", ".warc.gz": "warc", ".wet": "warc", ".wet.gz": "warc",
}
WHOLE_FILE = 1 << 62  # the byte range of a split that is a whole file
SPLIT_SCHEMA = pa.schema([
    ("split_id", pa.string()),
    ("source", pa.string()),
    ("format", pa.string()),
    ("compression", pa.string()),
    ("row_group", pa.int64()),  # Parquet: the row group; else -1
    ("first_row", pa.int64()),  # Parquet: the number in the file of the row group's first row
    ("start", pa.int64()),  # text: the byte range [start, stop); Parquet: 0, 0
    ("stop", pa.int64()),
    ("rows", pa.int64()),  # Parquet: the row group's rows (from the footer); else -1, not known before reading
])


def file_format(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from a file name, or None for other files."""
    name = posixpath.basename(path).lower()
    for suffix, kind in sorted(FORMATS.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return kind, ("gzip" if suffix.endswith(".gz") else None)
    return None


@dataclass(frozen=True)
class Tables:
    """Rows of the Parquet, JSON Lines, CSV and WARC files under ``url`` (a path, a URL or a glob),
    listed as splits (see the module's docstring). ``split_bytes`` sizes a text file's
    byte ranges."""

    unit: ClassVar[str] = "splits"  # what the run's counts.input counts
    rows_column: ClassVar[str] = "rows"  # the rows a split holds, where the listing knows (-1 where not)
    # A split is the run's input, but a row is the record a user knows: the reader's id of
    # each row, which error rows keep and the quarantine's record_id shows (a split that
    # fails whole has no row: its split_id is shown).
    row_id: ClassVar[str] = "record_id"
    url: str
    split_bytes: int = 32 * 2**20
    id_column: str = "split_id"
    # How the work is packed and listed, not which rows a run makes: out of the repr, so out of
    # the run's fingerprint (retuning them between a killed run and its resume keeps the work).
    files_per_block: int = field(default=64, repr=False)  # splits a task reads at most, up to block_bytes of them
    footer_threads: int = field(default=16, repr=False)  # Parquet footers read at once while listing (a bucket
    # takes tens of ms for each)
    given: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.split_bytes < 1024:
            raise ConfigError(f"split_bytes must be at least 1024, got {self.split_bytes}")
        if self.footer_threads < 1:
            raise ConfigError(f"footer_threads must be at least 1, got {self.footer_threads}")
        object.__setattr__(self, "given", self.url)
        object.__setattr__(self, "url", absolute_url(self.url, "input"))

    @property
    def keys(self) -> tuple[str, ...]:
        return ("split_id", "source")

    @property
    def extensions(self) -> tuple[str, ...]:
        """The file names it reads; the input's other files are ignored, and a run says so."""
        return tuple(FORMATS)

    @property
    def block_bytes(self) -> int:
        """Splits smaller than this are packed into one task up to this many bytes (a
        task costs more than a small row group or file takes to read); larger ones are a
        task each."""
        return self.split_bytes

    @property
    def schema(self) -> pa.Schema:
        return SPLIT_SCHEMA

    def list(self) -> pa.Table:
        return self.listing().records

    def listing(self, exclude: str | None = None) -> Listing:
        """Every split, in a stable order, and its size in bytes (a row group's uncompressed
        size; a text split's byte range); and the files of no table format the URL matched.
        Nothing under ``exclude`` (the run's output) is read, not even a footer (Files.listing)."""
        files = Files(self.url, extensions=tuple(FORMATS), given=self.given or self.url).listing(exclude)
        files, sizes, ignored, warnings = files.records, files.sizes, files.ignored, files.warnings
        rows, split_sizes = [], []
        fs, _ = fsspec.core.url_to_fs(self.url)
        listed = [(uri, size, *file_format(uri)) for uri, size in
                  zip(files.column("source").to_pylist(), sizes.to_pylist())]
        parquet = [uri for uri, _, kind, _ in listed if kind == "parquet"]
        with ThreadPoolExecutor(min(self.footer_threads, max(1, len(parquet)))) as pool:
            footers = dict(zip(parquet, pool.map(lambda uri: _row_groups(fs, uri), parquet)))
        for uri, size, kind, compression in listed:
            if kind == "parquet":
                for row_group, first_row, nbytes, count in footers[uri]:
                    rows.append((uri, kind, None, row_group, first_row, 0, 0, count))
                    split_sizes.append(nbytes)
            elif (compression is not None and kind != "warc") or not size:
                # Compressed, empty, or of a size the store did not say: one split, read to the end.
                rows.append((uri, kind, compression, -1, 0, 0, WHOLE_FILE, -1))
                split_sizes.append(size)
            else:
                for start in range(0, size, self.split_bytes):
                    stop = min(size, start + self.split_bytes)
                    rows.append((uri, kind, compression, -1, 0, start, stop, -1))
                    split_sizes.append(stop - start)
        columns = list(zip(*rows)) if rows else [[]] * (len(SPLIT_SCHEMA) - 1)
        names = [f.name for f in SPLIT_SCHEMA][1:]
        table = {name: pa.array(values, SPLIT_SCHEMA.field(name).type) for name, values in zip(names, columns)}
        ids = [stable_id(f"{uri}#{group}:{start}") for uri, group, start in
               zip(table["source"].to_pylist(), table["row_group"].to_pylist(), table["start"].to_pylist())]
        return Listing(pa.table({"split_id": pa.array(ids, pa.string()), **table}, schema=SPLIT_SCHEMA),
                       pa.array(split_sizes, pa.int64()), ignored, warnings)

    def describe(self) -> str:
        return f"table files {self.url} (Parquet by row group, JSON Lines / CSV / WARC by {self.split_bytes:,}-byte range)"


def _row_groups(fs, uri: str) -> list[tuple[int, int, int, int]]:
    """(row group, number of its first row in the file, bytes, rows) from the footer.
    A file whose footer cannot be read is one split of the whole file (row group -1):
    reading it fails, and the split is quarantined with the reason."""
    import pyarrow.parquet as pq

    try:
        refuse_special_file(uri)
        with fs.open(fs._strip_protocol(uri), "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except Exception:  # noqa: BLE001 - the reader reports it, as a quarantined split
        return [(-1, 0, 0, -1)]
    if not metadata.num_row_groups:
        return [(-1, 0, 0, 0)]  # a file with no row group holds no records: one split, counted as empty
    groups, first = [], 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        groups.append((index, first, group.total_byte_size, group.num_rows))
        first += group.num_rows
    return groups
