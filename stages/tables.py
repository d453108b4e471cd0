"""Reading table splits (headrace.tables.Tables) into rows."""

from __future__ import annotations

import csv
import gzip
import io
import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from headrace import PipelineError, Stage
from headrace.envelope import NO_RECORDS, ROW_ERROR
from headrace.storage import refuse_special_file
from headrace.tables import SPLIT_SCHEMA
from stages.warc import readline

SPLIT_COLUMNS = tuple(f.name for f in SPLIT_SCHEMA)
FOOTERS_KEPT = 16  # Parquet footers a worker process keeps parsed (most recently used)
_FOOTERS: dict = {}  # (URI, version) -> pq.FileMetaData, oldest first
_VERSION_FIELDS = ("size", "mtime", "ETag", "etag", "generation", "LastModified", "updated")


class ReadTable(Stage):
    """One split of a table file -> its rows: ``record_id`` plus ``columns`` (name in the
    file -> type), named as ``rename`` says (default: as in the file).

    A row that cannot be read (a malformed JSON line, a CSV row with the wrong number of
    fields, a value of the wrong type, a null or empty value of a ``required`` column, a
    null or empty id) becomes a quarantined row naming the file, its line's byte offset (or row
    number) and the reason; its neighbours carry on. A split that cannot be read at all
    (a missing column, a corrupt file) is quarantined whole. ``as_text`` names string
    columns that take a value of any type as its text (``5``, ``true``, ``["a", "b"]``),
    as a prompt template shows them, instead of refusing it as a wrong type.

    WARC and WET files have the columns ``stages.warc.FIELDS``: ``url``, ``date``,
    ``warc_type``, ``warc_record_id``, ``content_type``, ``http_status`` (int64) and
    ``text``, the payload decoded; an HTML payload becomes its visible text (HtmlToText's
    ``visible_text``) unless ``html_to_text=False``. A truncated or corrupt record, or one
    whose payload is not text (an image, a PDF), is quarantined with its offset.
    """

    needs = SPLIT_COLUMNS
    drops = tuple(c for c in SPLIT_COLUMNS if c not in ("split_id", "source"))
    batch_size = 1
    fuse = False  # a split makes thousands of rows: the next stage batches those, not splits

    def __init__(
        self,
        columns: dict[str, pa.DataType],
        id_column: str | None = None,
        required: tuple[str, ...] = (),
        rename: dict[str, str] | None = None,
        html_to_text: bool = True,
        as_text: tuple[str, ...] = (),
    ):
        self.columns = dict(columns)
        self.as_text = tuple(as_text)
        self.id_column = id_column
        self.required = tuple(required)
        self.rename = dict(rename or {})
        self.html_to_text = html_to_text
        if any(not isinstance(name, str) or not name.strip() for name in self.columns):
            raise PipelineError(f"ReadTable: a column name is empty ({', '.join(map(repr, self.columns))})")
        if id_column is not None and not (isinstance(id_column, str) and id_column.strip()):
            raise PipelineError(f"ReadTable: id_column is {id_column!r}: give a column's name, or None for ids "
                                "made of the file and the row's place")
        unknown = [name for name in self.required if name not in self.columns]
        if unknown:
            raise PipelineError(f"ReadTable: required column {', '.join(map(repr, unknown))} is not one of its "
                              f"columns ({', '.join(map(repr, self.columns))})")
        wrong = [name for name in self.as_text if not pa.types.is_string(self.columns.get(name, pa.null()))]
        if wrong:
            raise PipelineError(f"ReadTable: as_text column {', '.join(map(repr, wrong))} is not one of its "
                                "pa.string() columns")
        self.adds = {"record_id": pa.string(), **{self.rename.get(n, n): t for n, t in self.columns.items()}}
        # A file's column may share a name with a split's (``format``, ``rows``, ``start``):
        # it replaces the split's, and is not dropped with the rest of them.
        self.drops = tuple(c for c in type(self).drops if c not in self.adds)

    def process(self, batch: pa.Table) -> pa.Table:
        parts = [self._read(split) for split in batch.to_pylist()]
        return pa.concat_tables(parts) if parts else self._empty()

    # -- one split -------------------------------------------------------------

    def _read(self, split: dict) -> pa.Table:
        """One split's rows; an error that fails the split names its file (a truncated gzip
        file's EOFError does not) and, for a byte range, where it is."""
        try:
            return self._read_split(split)
        except Exception as exc:
            if split["source"] not in str(exc):
                where = f" bytes {split['start']}-{split['stop']}" if split["format"] != "parquet" and split["start"] else ""
                exc.add_note(f"reading {split['source']}{where}")
            raise

    def _read_split(self, split: dict) -> pa.Table:
        refuse_special_file(split["source"])  # a named pipe would wait for a writer for ever
        wanted = list(dict.fromkeys([*self.columns, *([self.id_column] if self.id_column else [])]))
        folders = self._folders(split, wanted)
        if split["format"] == "parquet":
            return self._read_parquet(split, wanted, folders)
        if split["format"] == "warc":
            from stages.warc import FIELDS

            values, positions, errors = _warc_rows(split, [n for n in wanted if n in FIELDS or n not in folders],
                                                   self.html_to_text)
            values |= {name: [value] * len(positions) for name, (_, value) in folders.items() if name not in FIELDS}
        else:
            values, positions, errors = self._text(split, wanted, folders)
        if not positions:
            return self._no_records(split)
        return self._rows(split, values, positions, errors)

    def _folders(self, split: dict, wanted: list[str]) -> dict[str, tuple[str | None, object]]:
        """The wanted columns named by the file's folders, Hive-style (``.../lang=en/part-0.parquet``,
        as Spark's ``partitionBy`` and ``pyarrow.dataset``'s hive partitioning write them):
        name -> (the text in the path, its value as the column's type). A column the file
        has is read from the file; these fill a column it lacks, for every row."""
        out = {}
        for name, text in _hive_folders(split["source"]).items():
            if name not in wanted:
                continue
            kind = self.columns.get(name, pa.string())
            value = None if text is None else _parsed([text], kind)[0]
            if value is not None and not _fits([value], kind):
                raise ValueError(f"{split['source']}: folder {name}={text}: {text!r} is not {kind}")
            out[name] = (text, value)
        return out

    def _no_records(self, split: dict) -> pa.Table:
        """A byte range in which no line or record starts, an empty row group or file: the
        split is accounted as holding no records (one marker row, never output)."""
        schema = self._empty().schema
        row = {**dict.fromkeys(schema.names), "split_id": split["split_id"], "source": split["source"],
               ROW_ERROR: NO_RECORDS}
        return pa.Table.from_pylist([row], schema=schema)

    def _rows(self, split: dict, values: dict, positions: list, errors: list) -> pa.Table:
        """Rows from Python values, each checked against its column's declared type."""
        uri = split["source"]
        where = "row" if split["format"] == "parquet" else "offset"
        errors = [None if e is None else f"{uri} {where} {p}: {e}" for e, p in zip(errors, positions)]
        ids = []
        for row, position in enumerate(positions):
            value = values[self.id_column][row] if self.id_column else None
            if value is not None and str(value) == "":
                value, empty = None, True  # an empty id is no id: before, the row's id was ""
            else:
                empty = False
            if self.id_column and value is None and errors[row] is None:
                errors[row] = f"{uri} {where} {position}: id column {self.id_column!r} is {'empty' if empty else 'null'}"
            # A row without an id (a malformed line, a null or empty id) is quarantined: under its place.
            ids.append((f"{uri}#{position}" if where == "row" else f"{uri}@{position}") if value is None else str(value))
        columns = {"split_id": [split["split_id"]] * len(positions), "source": [uri] * len(positions), "record_id": ids}
        for name, kind in self.columns.items():
            columns[name] = self._column(values[name], kind, name, errors, positions, uri, where,
                                         text=split["format"] == "csv")
        for name in self.required:
            for row, value in enumerate(columns[name]):
                if errors[row] is None and (value is None or value == ""):
                    errors[row] = f"{uri} {where} {positions[row]}: {name} is {'null' if value is None else 'empty'}"
        table = pa.table({
            "split_id": pa.array(columns["split_id"], pa.string()),
            "source": pa.array(columns["source"], pa.string()),
            "record_id": pa.array(ids, pa.string()),
            **{self.rename.get(name, name): pa.array(columns[name], kind) for name, kind in self.columns.items()},
        })
        return table.append_column(ROW_ERROR, pa.array(errors, pa.string()))

    def _column(self, values, kind, name, errors, positions, uri, where, text=False) -> list:
        """Python values of one column, checked against its declared type: the whole
        column at once, and row by row only when some value does not fit. ``text``: the
        values are CSV fields, parsed as ``kind`` first (``_parsed``)."""
        if text and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            values = _parsed(values, kind)
        if name in self.as_text:
            values = [_text_of(value) for value in values]
        if _fits(values, kind):
            return values
        out = []
        for row, value in enumerate(values):
            if value is not None and not _fits([value], kind):
                if errors[row] is None:
                    errors[row] = f"{uri} {where} {positions[row]}: column {name!r}: {value!r:.80} is not {kind}"
                value = None
            out.append(value)
        return out

    def _read_parquet(self, split: dict, wanted: list[str], folders: dict) -> pa.Table:
        """A row group's rows, kept in Arrow: a column whose type in the file is the
        declared one (or holds the same values: dictionary-encoded, large strings) is
        used as read; any other goes through ``_rows``' check value by value."""
        import pyarrow.parquet as pq

        fs, path = fsspec.core.url_to_fs(split["source"])
        local = isinstance(fs, LocalFileSystem)
        # On a store each of Arrow's reads (a footer, a column chunk it asks for) is one GET of
        # it: fsspec's read-ahead fetched 50 MB past each (s3fs's block), the columns not asked
        # for too (a 10 MB file of 8 row groups: 45.6 MB fetched, now 5.9 MB in as many requests).
        with pa.OSFile(path) if local else fs.open(path, "rb", cache_type="none") as handle:
            # A file of N row groups is N splits, each reading its footer (O(N) bytes): O(N^2)
            # for the file without a cache (2,000 groups: 5.5 ms a split, 1.4 MB fetched each
            # time from a bucket). The footer is parsed once per worker process and version.
            details = None if local else getattr(handle, "details", None)
            key = (split["source"], _version(details or fs.info(path)))
            metadata = _FOOTERS.pop(key, None)
            reader = pq.ParquetFile(handle, metadata=metadata)
            _FOOTERS[key] = reader.metadata
            while len(_FOOTERS) > FOOTERS_KEPT:
                _FOOTERS.pop(next(iter(_FOOTERS)))
            has = reader.schema_arrow.names
            missing = [c for c in wanted if c not in has and c not in folders]
            if missing:
                raise KeyError(f"{split['source']} has no column {', '.join(map(repr, missing))} "
                               f"(it has {', '.join(has)})")
            present = [c for c in wanted if c in has]
            group = split["row_group"]
            table = reader.read_row_group(group, columns=present) if group >= 0 else reader.read(columns=present)
        if table.num_rows == 0:
            return self._no_records(split)
        for name in wanted:
            if name not in has:
                table = table.append_column(name, pa.array([folders[name][1]] * table.num_rows,
                                                           self.columns.get(name, pa.string())))
        columns = {name: _as_declared(table.column(name), kind) for name, kind in self.columns.items()}
        ids = None
        if self.id_column:
            ids = _as_declared(table.column(self.id_column), pa.string(), integers=True)
        if (self.id_column and ids is None) or any(column is None for column in columns.values()):
            positions = (np.arange(table.num_rows) + split["first_row"]).tolist()
            values = {name: table.column(name).to_pylist() for name in wanted}
            return self._rows(split, values, positions, [None] * table.num_rows)
        uri, n, first = split["source"], table.num_rows, split["first_row"]
        errors: dict[int, str] = {}
        places = lambda: pc.binary_join_element_wise(  # noqa: E731 - "URI#row", made only where needed
            f"{uri}#", pc.cast(pa.array(np.arange(first, first + n)), pa.string()), "")
        if ids is None:
            ids = places()
        else:
            empty = pc.equal(pc.utf8_length(ids), 0)
            if ids.null_count or pc.any(empty).as_py():
                for row in _rows_where(pc.is_null(ids)):
                    errors.setdefault(row, f"{uri} row {first + row}: id column {self.id_column!r} is null")
                for row in _rows_where(empty):
                    errors.setdefault(row, f"{uri} row {first + row}: id column {self.id_column!r} is empty")
                # rows without an id are quarantined under their place
                ids = pc.coalesce(pc.if_else(empty, pa.scalar(None, pa.string()), ids), places())
        for name in self.required:
            column = columns[name]
            missing = pc.is_null(column)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                missing = pc.or_kleene(missing, pc.equal(pc.utf8_length(column), 0))
            for row in _rows_where(missing):
                state = "null" if not column[row].is_valid else "empty"
                errors.setdefault(row, f"{uri} row {first + row}: {name} is {state}")
        error_column = pa.nulls(n, pa.string())
        if errors:
            error_column = pa.array([errors.get(row) for row in range(n)], pa.string())
        return pa.table({
            "split_id": pa.repeat(pa.scalar(split["split_id"], pa.string()), n),
            "source": pa.repeat(pa.scalar(uri, pa.string()), n),
            "record_id": ids,
            **{self.rename.get(name, name): column for name, column in columns.items()},
            ROW_ERROR: error_column,
        })

    def _text(self, split: dict, wanted: list[str], folders: dict):
        if split["format"] == "jsonl":
            _not_a_json_document(split)
            # one line at a time: a split is never held whole
            return _json_rows(_lines(split), wanted, {name: value for name, (_, value) in folders.items()})
        return _csv_rows(split, _csv_records(split), wanted, {name: text for name, (text, _) in folders.items()})

    def _empty(self) -> pa.Table:
        schema = pa.schema([("split_id", pa.string()), ("source", pa.string()), *self.adds.items(),
                            (ROW_ERROR, pa.string())])
        return schema.empty_table()


READ_BUFFER = 4 << 20  # bytes a table reader asks a store for at a time


def _open(fs, path: str, buffer: int = READ_BUFFER):
    """``path`` opened to read; on a store, in a buffer of Python's own (io.BufferedReader).

    fsspec's files on a store find a line by reading a whole block (s3fs's is 50 MB) and
    copying it, line after line: about 2.5 ms a line on S3, so a 96 MB JSON Lines file took
    longer than 15 minutes, and its read-ahead fetched 50 MB past every read (the first 64
    bytes of a file cost 50 MB). Python's reader finds lines in its buffer in C, and each
    refill is one ranged GET of ``buffer`` bytes."""
    if isinstance(fs, LocalFileSystem):
        return fs.open(path, "rb")
    return io.BufferedReader(fs.open(path, "rb", block_size=buffer, cache_type="none"), buffer)


def _lines(split: dict):
    """(byte offset, line) for every line that starts inside the split's byte range; the
    whole file when compressed. Bounded memory: one line at a time."""
    fs, path = fsspec.core.url_to_fs(split["source"])
    with _open(fs, path) as raw:
        if split["compression"] == "gzip":
            offset = 0
            for line in gzip.GzipFile(fileobj=raw):
                yield offset, line
                offset += len(line)
            return
        start, stop = split["start"], split["stop"]
        handle = raw
        offset = start
        if start > 0:
            # The line that starts before the range belongs to the split before: skip to the
            # first line that starts at or after ``start``.
            handle.seek(start - 1)
            skipped = handle.readline()
            offset = start - 1 + len(skipped)
        else:
            handle.seek(0)
        while offset < stop:
            line = handle.readline()
            if not line:
                break
            yield offset, line
            offset += len(line)


def _not_a_json_document(split: dict) -> None:
    """Raise for a file that is one JSON value over several lines, as pretty-printers write
    it (``json.dump(rows, indent=2)``, ``jq .``: ``[`` or ``{`` alone on the first line):
    read as lines it would give some of its objects and quarantine the rest, each for a
    reason that hides the cause. Every split of such a file is quarantined whole, with this
    one. A malformed first record is that line's error, as any other line's."""
    fs, path = fsspec.core.url_to_fs(split["source"])
    with _open(fs, path, 1 << 16) as raw:
        handle = gzip.GzipFile(fileobj=raw) if split["compression"] == "gzip" else raw
        first = readline(handle, MAX_FIRST_LINE).lstrip(b"\xef\xbb\xbf").strip()
    if first in (b"[", b"{"):
        array = first == b"["
        raise ValueError(f"{split['source']} is one JSON {'array' if array else 'object'} over several lines, not "
                         "JSON Lines (one object per line)" + (": convert it first, e.g. with jq -c '.[]'" if array else ""))


JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
MAX_FIRST_LINE = 64  # bytes of a JSON file's first line read to tell JSON Lines from one pretty-printed document


def _json_rows(lines, wanted: list[str], folders: dict):
    """Rows of JSON Lines; a key a record lacks takes its value from ``folders`` if named there."""
    values = {name: [] for name in wanted}
    positions, errors = [], []
    for offset, raw in lines:
        if not raw.strip():
            continue  # a blank line is no record
        positions.append(offset)
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {JSON_KINDS.get(type(record), type(record).__name__)}, not an object")
            error = None
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            record, error = {}, f"malformed JSON line: {exc}"
        errors.append(error)
        for name in wanted:
            values[name].append(record.get(name, folders.get(name)))
    return values, positions, errors


def _warc_rows(split: dict, wanted: list[str], html_to_text: bool):
    from stages import warc

    unknown = [c for c in wanted if c not in warc.FIELDS]
    if unknown:
        raise KeyError(f"{split['source']} is a WARC file: it has no column {', '.join(map(repr, unknown))} "
                       f"(it has {', '.join(warc.FIELDS)})")
    values = {name: [] for name in wanted}
    positions, errors = [], []
    fs, path = fsspec.core.url_to_fs(split["source"])
    with _open(fs, path) as handle:
        for offset, raw, error in warc.framed(handle, split["start"], split["stop"], split["compression"] == "gzip"):
            fields = {}
            if error is None:
                try:
                    fields = warc.document(raw, html_to_text)
                except (ValueError, OSError) as exc:  # BadRecord and the decode errors are ValueErrors
                    error = str(exc)
                if fields is None:
                    continue  # warcinfo, request, metadata, revisit: not a document
            positions.append(offset)
            errors.append(error)
            for name in wanted:
                values[name].append(fields.get(name))
    return values, positions, errors


# A quoted CSV field may hold line breaks (a ticket's text, a spreadsheet's cell): such a
# row spans lines. A byte range cannot tell by itself whether its first line starts a row
# or goes on with a quoted field of the row before, so the rows of a byte range are those
# that start in [boundary(start), boundary(stop)), where boundary(offset) is the first row
# start at or after ``offset``, found by reading back from it (_csv_boundary). Both ranges
# that meet at an offset compute the same boundary: every row is read by exactly one split.
CSV_LOOKBACK = (1 << 16, 1 << 20)  # bytes read back to find a boundary: tried in turn
CSV_MAX_ROW_BYTES = 1 << 20  # a row longer than this: its quote is taken as never closed
UNCLOSED_QUOTE = (f"a quoted field is not closed (within the row's split, or {CSV_MAX_ROW_BYTES:,} bytes): "
                  "the row is read from its first line only")


def _csv_scan(line: bytes, inside: bool) -> tuple[bool, bool]:
    """(whether ``line`` ends inside a quoted field, whether it breaks CSV's grammar as
    Python's strict reader does: text after a closing quote); ``inside``: whether the line
    begins inside a quoted field. A quote opens a field only as its first character; in an
    unquoted field it is text (`5" screen`), as Python's reader takes it."""
    bad, i, n = False, 0, len(line)
    while i <= n:
        if inside:
            j = line.find(b'"', i)
            if j < 0:
                return True, bad
            if line[j + 1:j + 2] == b'"':
                i = j + 2  # a doubled quote: a quote in the text
                continue
            inside, after = False, line[j + 1:j + 2]
            if after == b",":
                i = j + 2
                if line[i:i + 1] == b'"':
                    inside, i = True, i + 1
                continue
            if after in (b"\n", b"\r", b""):
                return False, bad
            bad = True  # text after a closing quote: the rest of the field is taken as text
            i = j + 1
        # outside quotes, inside an unquoted field or at the end of one
        j = line.find(b",", i)
        if j < 0:
            return False, bad
        i = j + 1
        if line[i:i + 1] == b'"':
            inside, i = True, i + 1
    return inside, bad


def _csv_first_scan(line: bytes) -> tuple[bool, bool]:
    """_csv_scan for a line that begins a row (its first field may be quoted)."""
    if b'"' not in line:
        return False, False  # most rows: one line, nothing quoted
    if line[:1] == b'"':
        return _csv_scan(line[1:], True)
    return _csv_scan(line, False)


def _csv_boundary(handle, offset: int) -> int:
    """The first row start at or after ``offset`` (the file's size where none is). Read
    back from ``offset`` to a line start: of the two ways that line can be read (a row
    starts there, or a quoted field of an earlier row goes on), one the bytes up to the
    boundary contradict and the other does not (text after a closing quote: a field's
    opening quote taken for a closing one) is dropped. Where the two still disagree, a
    longer read back is tried; after the longest, a row starts at the first line start at
    or after ``offset`` (a quoted field would be longer than CSV_MAX_ROW_BYTES)."""
    if offset <= 0:
        return 0
    size = handle.seek(0, 2)
    if offset >= size:
        return size  # (a split "to the end" of a file that was empty when listed has a huge stop)
    for lookback in CSV_LOOKBACK:
        begin = max(0, offset - lookback)
        if begin > 0:
            handle.seek(begin - 1)
            begin += len(handle.readline()) - 1  # the first line start at or after it
        else:
            handle.seek(0)
        readings = [False, True] if begin > 0 else [False]  # inside a quoted field at ``begin``
        inside = {assumed: assumed for assumed in readings}
        found: dict[bool, int | None] = {assumed: None for assumed in readings}
        position, limit = begin, offset + lookback
        while True:
            line = handle.readline()
            for assumed in readings:
                if found[assumed] is None and position >= offset and (not inside[assumed] or not line):
                    found[assumed] = position
            answers = {found[assumed] for assumed in readings}
            if not line or position > limit or (None not in answers and len(answers) == 1):
                break
            contradicted = []
            for assumed in readings:
                inside[assumed], bad = _csv_scan(line, True) if inside[assumed] else _csv_first_scan(line)
                if bad:
                    contradicted.append(assumed)
            if len(contradicted) == 1 and len(readings) == 2:
                readings.remove(contradicted[0])
            position += len(line)
        answers = {found[assumed] for assumed in readings}
        if None not in answers and len(answers) == 1:
            return answers.pop()
    handle.seek(offset - 1)
    return offset - 1 + len(handle.readline())


def _csv_records(split: dict, buffer: int = READ_BUFFER):
    """(byte offset, row) for every CSV row that starts in the split (see CSV_LOOKBACK), a
    row's lines joined; a row whose quote does not close within the split (or within
    CSV_MAX_ROW_BYTES) comes back as its first line alone, and reading goes on at the next."""
    fs, path = fsspec.core.url_to_fs(split["source"])
    with _open(fs, path, buffer) as raw:
        if split["compression"] == "gzip":
            handle, start, stop = gzip.GzipFile(fileobj=raw), 0, None
        else:
            handle, start, stop = raw, _csv_boundary(raw, split["start"]), _csv_boundary(raw, split["stop"])
        handle.seek(start)
        pending: list[tuple[int, bytes]] = []  # lines read but not yet in a row
        offset = start
        while True:
            if not pending:
                if stop is not None and offset >= stop:
                    return
                line = handle.readline()
                if not line:
                    return
                offset += len(line)
                if b'"' not in line:  # most rows: one line, nothing quoted
                    yield offset - len(line), line, False
                    continue
                pending.append((offset - len(line), line))
            first, line = pending[0]
            row, size, used = [line], len(line), 1
            inside, _ = _csv_first_scan(line)
            while inside:
                if used == len(pending):
                    more = handle.readline() if (stop is None or offset < stop) and size <= CSV_MAX_ROW_BYTES else b""
                    if not more:
                        break
                    pending.append((offset, more))
                    offset += len(more)
                line = pending[used][1]
                row.append(line)
                size += len(line)
                used += 1
                inside, _ = _csv_scan(line, True)
            if inside:  # never closed: the first line alone, and on from the next
                yield first, pending.pop(0)[1], True
                continue
            del pending[:used]
            yield first, b"".join(row), False


def _csv_rows(split: dict, records, wanted: list[str], folders: dict):
    """Rows of a CSV file (fields as text); a column its header lacks is taken from
    ``folders`` (its text in the path) if named there."""
    header = _csv_header(split)
    if not header:
        if any(raw.strip() for _, raw, _ in records):
            raise ValueError(f"{split['source']}: the first line is blank; a CSV file's first line is its header")
        return {name: [] for name in wanted}, [], []  # an empty file: no records, as an empty JSON Lines file
    missing = [c for c in wanted if c not in header and c not in folders]
    if missing:
        raise KeyError(f"{split['source']} has no column {', '.join(map(repr, missing))} (it has {', '.join(header)})")
    index = {name: header.index(name) for name in wanted if name in header}
    values = {name: [] for name in wanted}
    positions, errors = [], []
    for offset, raw, unclosed in records:
        if offset == 0 or not raw.strip():
            continue  # the header row, or a blank line
        positions.append(offset)
        try:
            fields = next(csv.reader([raw.decode("utf-8")], strict=True))
            error = None if len(fields) == len(header) else f"expected {len(header)} fields, got {len(fields)}"
        except csv.Error as exc:
            fields, error = [], f"unreadable CSV row: {exc}"
        except (UnicodeDecodeError, StopIteration) as exc:
            fields, error = [], f"unreadable CSV row: {exc}"
        if unclosed:
            error = UNCLOSED_QUOTE
        errors.append(error)
        for name in wanted:
            values[name].append(None if error is not None else fields[index[name]] if name in index else folders[name])
    return values, positions, errors


def _csv_header(split: dict) -> list[str]:
    """The first row's fields (a quoted header name may hold a line break too)."""
    whole = {"source": split["source"], "compression": split["compression"], "start": 0, "stop": 1}
    for offset, raw, unclosed in _csv_records(whole, 1 << 16):  # a header is short: not a 4 MiB read
        return [] if unclosed else next(csv.reader([raw.decode("utf-8-sig")]), [])
    return []


def _as_declared(column: pa.ChunkedArray, kind: pa.DataType, integers: bool = False) -> pa.ChunkedArray | None:
    """``column`` as ``kind`` where it holds exactly the values ``pa.array(column.to_pylist(),
    kind)`` would make (the same type, dictionary-encoded, large or small offsets; with
    ``integers``, an integer column as its decimal strings, which is ``str(value)``), else None."""
    given = column.type
    if pa.types.is_dictionary(given):
        given = given.value_type
    same = given == kind or {given, kind} in ({pa.string(), pa.large_string()}, {pa.binary(), pa.large_binary()})
    if not (same or integers and pa.types.is_integer(given) and pa.types.is_string(kind)):
        return None
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. over 2 GiB of strings in one chunk
        return None


def _rows_where(mask: pa.ChunkedArray) -> list[int]:
    """The row numbers where a boolean column is true."""
    if not pc.any(mask).as_py():
        return []
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False)).tolist()


def _text_of(value):
    """A value of any type as text (``ReadTable(as_text=...)``): JSON's spelling for
    booleans, lists and mappings, ``str`` for numbers, dates, timestamps and decimals; bytes
    as UTF-8. Bytes that are not UTF-8 stay bytes, and the type check refuses them."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _fits(values: list, kind: pa.DataType) -> bool:
    """Whether Arrow takes ``values`` as ``kind`` without losing anything. ``pa.array``
    truncates a float to an integer type (2.5 -> 2) without a word; that is a wrong type."""
    if pa.types.is_integer(kind) and any(type(v) is float and not v.is_integer() for v in values):
        return False
    try:
        pa.array(values, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
        return False
    return True


def _parsed(fields: list, kind: pa.DataType) -> list:
    """CSV fields (strings) as values of ``kind``, parsed as Arrow casts text (numbers,
    ``true``/``false``, ISO dates and timestamps); an empty field is null, as in Spark's CSV
    reader. A field that does not parse stays a string, and the type check then says so."""
    strings = pa.array([None if field == "" else field for field in fields], pa.string())
    try:
        return strings.cast(kind).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = []
    for field in strings.to_pylist():
        try:
            out.append(None if field is None else pa.array([field]).cast(kind)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(field)
    return out


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # Spark's and Hive's folder for a null partition value


def _hive_folders(uri: str) -> dict[str, str | None]:
    """``name=value`` folders on a file's path, innermost last (and winning), unescaped as
    Spark escapes them (``%3D``, ``%2F``); Hive's null folder is None."""
    from urllib.parse import unquote

    out = {}
    for folder in fsspec.core.split_protocol(uri)[1].split("/")[:-1]:
        name, equals, value = folder.partition("=")
        if equals and name:
            out[unquote(name)] = None if value == HIVE_NULL else unquote(value)
    return out


def _version(details: dict) -> tuple:
    """What tells one version of a file from another: its size and whichever of its
    modification time, ETag or generation the store gives."""
    return tuple(str(details.get(field)) for field in _VERSION_FIELDS)
