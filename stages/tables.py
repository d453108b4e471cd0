"""Reading table splits (headrace.tables.Tables) into rows."""

from __future__ import annotations

import csv
import gzip
import json

import fsspec
import numpy as np
import pyarrow as pa

from headrace import Stage
from headrace.envelope import NO_RECORDS, ROW_ERROR
from headrace.tables import SPLIT_SCHEMA

SPLIT_COLUMNS = tuple(f.name for f in SPLIT_SCHEMA)


class ReadTable(Stage):
    """One split of a table file -> its rows: ``record_id`` plus ``columns`` (name in the
    file -> type), named as ``rename`` says (default: as in the file).

    A row that cannot be read (a malformed JSON line, a CSV row with the wrong number of
    fields, a value of the wrong type, a null or empty value of a ``required`` column, a
    null id) becomes a quarantined row naming the file, its line's byte offset (or row
    number) and the reason; its neighbours carry on. A split that cannot be read at all
    (a missing column, a corrupt file) is quarantined whole.

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
    ):
        self.columns = dict(columns)
        self.id_column = id_column
        self.required = tuple(required)
        self.rename = dict(rename or {})
        self.html_to_text = html_to_text
        self.adds = {"record_id": pa.string(), **{self.rename.get(n, n): t for n, t in self.columns.items()}}

    def process(self, batch: pa.Table) -> pa.Table:
        parts = [self._read(split) for split in batch.to_pylist()]
        return pa.concat_tables(parts) if parts else self._empty()

    # -- one split -------------------------------------------------------------

    def _read(self, split: dict) -> pa.Table:
        wanted = list(dict.fromkeys([*self.columns, *([self.id_column] if self.id_column else [])]))
        if split["format"] == "parquet":
            values, positions, errors = self._parquet(split, wanted)
        elif split["format"] == "warc":
            values, positions, errors = _warc_rows(split, wanted, self.html_to_text)
        else:
            values, positions, errors = self._text(split, wanted)
        uri = split["source"]
        if not positions:
            # A byte range in which no line or record starts, an empty row group or file:
            # the split is accounted as holding no records (one marker row, never output).
            schema = self._empty().schema
            row = {**dict.fromkeys(schema.names), "split_id": split["split_id"], "source": uri, ROW_ERROR: NO_RECORDS}
            return pa.Table.from_pylist([row], schema=schema)
        where = "row" if split["format"] == "parquet" else "offset"
        errors = [None if e is None else f"{uri} {where} {p}: {e}" for e, p in zip(errors, positions)]
        ids = []
        for row, position in enumerate(positions):
            if self.id_column:
                value = values[self.id_column][row]
                if value is None and errors[row] is None:
                    errors[row] = f"{uri} {where} {position}: id column {self.id_column!r} is null"
                ids.append(None if value is None else str(value))
            else:
                ids.append(f"{uri}#{position}" if where == "row" else f"{uri}@{position}")
        columns = {"split_id": [split["split_id"]] * len(positions), "source": [uri] * len(positions), "record_id": ids}
        for name, kind in self.columns.items():
            columns[name] = self._column(values[name], kind, name, errors, positions, uri, where)
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

    def _column(self, values, kind, name, errors, positions, uri, where) -> list:
        """Python values of one column, checked against its declared type: the whole
        column at once, and row by row only when some value does not fit."""
        try:
            pa.array(values, kind)
            return values
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
        out = []
        for row, value in enumerate(values):
            if value is not None:
                try:
                    pa.array([value], kind)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                    if errors[row] is None:
                        errors[row] = f"{uri} {where} {positions[row]}: column {name!r}: {value!r:.80} is not {kind}"
                    value = None
            out.append(value)
        return out

    def _parquet(self, split: dict, wanted: list[str]):
        import pyarrow.parquet as pq

        fs, path = fsspec.core.url_to_fs(split["source"])
        with fs.open(path, "rb") as handle:
            reader = pq.ParquetFile(handle)
            missing = [c for c in wanted if c not in reader.schema_arrow.names]
            if missing:
                raise KeyError(f"{split['source']} has no column {', '.join(map(repr, missing))} "
                               f"(it has {', '.join(reader.schema_arrow.names)})")
            group = split["row_group"]
            table = reader.read_row_group(group, columns=wanted) if group >= 0 else reader.read(columns=wanted)
        first = split["first_row"]
        positions = (np.arange(table.num_rows) + first).tolist()
        values = {name: table.column(name).to_pylist() for name in wanted}
        return values, positions, [None] * table.num_rows

    def _text(self, split: dict, wanted: list[str]):
        lines = _lines(split)  # one line at a time: a split is never held whole
        if split["format"] == "jsonl":
            return _json_rows(lines, wanted)
        return _csv_rows(split, lines, wanted)

    def _empty(self) -> pa.Table:
        schema = pa.schema([("split_id", pa.string()), ("source", pa.string()), *self.adds.items(),
                            (ROW_ERROR, pa.string())])
        return schema.empty_table()


def _lines(split: dict):
    """(byte offset, line) for every line that starts inside the split's byte range; the
    whole file when compressed. Bounded memory: one line at a time."""
    fs, path = fsspec.core.url_to_fs(split["source"])
    with fs.open(path, "rb") as raw:
        if split["compression"] == "gzip":
            offset = 0
            for line in gzip.GzipFile(fileobj=raw):
                yield offset, line
                offset += len(line)
            return
        start, stop = split["start"], split["stop"]
        handle = raw  # fsspec's files buffer reads themselves (blocks of a few MiB on a store)
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


def _json_rows(lines, wanted: list[str]):
    values = {name: [] for name in wanted}
    positions, errors = [], []
    for offset, raw in lines:
        if not raw.strip():
            continue  # a blank line is no record
        positions.append(offset)
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
            error = None
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            record, error = {}, f"malformed JSON line: {exc}"
        errors.append(error)
        for name in wanted:
            values[name].append(record.get(name))
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
    with fs.open(path, "rb") as handle:
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


def _csv_rows(split: dict, lines, wanted: list[str]):
    header = _csv_header(split)
    missing = [c for c in wanted if c not in header]
    if missing:
        raise KeyError(f"{split['source']} has no column {', '.join(map(repr, missing))} (it has {', '.join(header)})")
    index = {name: header.index(name) for name in wanted}
    values = {name: [] for name in wanted}
    positions, errors = [], []
    for offset, raw in lines:
        if offset == 0 or not raw.strip():
            continue  # the header line, or a blank line
        positions.append(offset)
        try:
            fields = next(csv.reader([raw.decode("utf-8")]))
            error = None if len(fields) == len(header) else f"expected {len(header)} fields, got {len(fields)}"
        except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
            fields, error = [], f"unreadable CSV row: {exc}"
        errors.append(error)
        for name in wanted:
            values[name].append(fields[index[name]] if error is None else None)
    return values, positions, errors


def _csv_header(split: dict) -> list[str]:
    fs, path = fsspec.core.url_to_fs(split["source"])
    with fs.open(path, "rb") as raw:
        handle = gzip.GzipFile(fileobj=raw) if split["compression"] == "gzip" else raw
        first = handle.readline().decode("utf-8-sig")
    return next(csv.reader([first]), [])
