"""Records from table files: Parquet split by row group, JSON Lines and CSV by byte range,
gzip whole; every good row once, every bad one quarantined with its file and position,
its neighbours untouched; the run counts splits."""

import csv
import gzip
import io
import json
import os
import random

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import headrace
from conftest import QUIET, bucket, write
from headrace import Pipeline, Stage, output_sink
from headrace.tables import Tables
from headrace.envelope import NO_RECORDS
from headrace.report import summary
from stages.tables import ReadTable, _lines

DS = "2026-11-28"


def sentence(rng, n):
    return " ".join(rng.choice(["river", "weir", "sluice", "gate", "flow", "mill", "race", "head"]) for _ in range(n))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Three formats with known good and bad rows; returns (folder, expected ids, bad positions)."""
    rng = random.Random(5)
    folder = tmp_path_factory.mktemp("tables")
    expected, bad = set(), set()
    # Parquet: 14 rows in row groups of 4 (4 splits); row 6 has a null text.
    texts = [sentence(rng, 6) for _ in range(14)]
    texts[6] = None
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(14)], "text": texts}), folder / "shard.parquet",
                   row_group_size=4)
    expected |= {f"p{i}" for i in range(14) if i != 6}
    bad.add("shard.parquet row 6: text is null")
    # JSON Lines, about 4 KB (several 1,024-byte splits): line 20 is malformed, line 31 has an empty text,
    # line 40 a number for its text.
    lines = []
    for i in range(60):
        if i == 20:
            lines.append('{"id": "j20", "text": "unterminated')
        elif i == 31:
            lines.append(json.dumps({"id": "j31", "text": ""}))
        elif i == 40:
            lines.append(json.dumps({"id": "j40", "text": 40}))  # a number where text is declared
        else:
            lines.append(json.dumps({"id": f"j{i}", "text": sentence(rng, 8)}))
            expected.add(f"j{i}")
    data = ("\n".join(lines) + "\n").encode()
    write(str(folder), "lines.jsonl", data)
    offset_20 = sum(len(line) + 1 for line in lines[:20])
    bad |= {f"lines.jsonl offset {offset_20}: malformed JSON line", "lines.jsonl offset", "text is empty",
            "column 'text': 40 is not string"}
    # CSV: a header, 9 rows; row 4 has a field too many.
    rows = ["id,text"] + [f"c{i},{sentence(rng, 5)}" if i != 4 else f"c{i},a,b" for i in range(9)]
    write(str(folder), "table.csv", ("\n".join(rows) + "\n").encode())
    expected |= {f"c{i}" for i in range(9) if i != 4}
    bad.add("expected 2 fields, got 3")
    # gzip JSON Lines: one split, read whole.
    write(str(folder), "more.jsonl.gz", gzip.compress(b"".join(
        (json.dumps({"id": f"g{i}", "text": sentence(rng, 4)}) + "\n").encode() for i in range(5))))
    expected |= {f"g{i}" for i in range(5)}
    # A line of 2,500 bytes: the second 1 KiB range of this file has no line starting in it.
    long = json.dumps({"id": "long", "text": sentence(rng, 600)[:2460]}) + "\n" + json.dumps({"id": "short", "text": "x"}) + "\n"
    write(str(folder), "long.jsonl", long.encode())
    assert 2048 < long.index("short") < 3072
    expected |= {"long", "short"}
    # A compression no reader takes: ignored, and the run says so (rows would otherwise go unread unsaid).
    write(str(folder), "archive.jsonl.zst", b"(\xb5/\xfd not read")
    return folder, expected, bad


def read_only(folder, output):
    return Pipeline(
        name="tables",
        source=Tables(str(folder), split_bytes=1024),
        stages=[ReadTable({"text": pa.string()}, id_column="id", required=("text",))],
        sink=output_sink(str(output), rows_per_file=1000),
        columns=["record_id", "source", "text"],
    )


def test_every_line_of_a_text_file_belongs_to_exactly_one_byte_range(tmp_path):
    rng = random.Random(9)
    lines = [("x" * rng.randint(0, 300)).encode() + b"\n" for _ in range(400)]
    path = write(str(tmp_path), "f.jsonl", b"".join(lines))
    size = os.path.getsize(path)
    for split_bytes in (1024, 1500, 4096, 10_000, size, size + 7):
        seen = []
        for start in range(0, size, split_bytes):
            split = {"source": "file://" + path, "compression": None, "start": start, "stop": min(size, start + split_bytes)}
            seen += [offset for offset, _ in _lines(split)]
        offsets = [sum(len(line) for line in lines[:i]) for i in range(len(lines))]
        assert seen == offsets, split_bytes


def test_rows_of_parquet_jsonl_csv_and_gzip_each_once_bad_ones_quarantined_with_their_place(
        ray_cluster, tables, tmp_path):
    folder, expected, bad = tables
    result = headrace.run(read_only(folder, tmp_path / "out"), DS, QUIET)
    data = pq.read_table(tmp_path / "out" / f"ds={DS}")
    ids = data.column("record_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == expected
    quarantine = pq.read_table(tmp_path / "out" / "_quarantine" / f"ds={DS}").to_pylist()
    messages = sorted(q["message"] for q in quarantine)
    assert len(quarantine) == 5, messages
    for fragment in bad:
        assert any(fragment in m for m in messages), (fragment, messages)
    # The quarantine names each row as the output would (its id), or by its place where it has
    # no id (a malformed line, a CSV row of the wrong width): not by the split it came in.
    def place(fragment):
        message = next(m for m in messages if fragment in m)
        return message.split(" offset ")[0] + "@" + message.split(" offset ")[1].split(":")[0]

    assert place("malformed JSON line").startswith(f"file://{folder}/lines.jsonl@")
    assert sorted(q["record_id"] for q in quarantine) == sorted(
        ["p6", "j31", "j40", place("malformed JSON line"), place("expected 2 fields")])
    # Splits, not files, are the run's inputs: 4 row groups, 1 gzip file, the CSV, and the JSON Lines files in 1 KiB ranges;
    # the range of long.jsonl in which no line starts is accounted as holding no records.
    jsonl_splits = -(-os.path.getsize(folder / "lines.jsonl") // 1024)
    assert result.manifest["counts"]["input"] == 4 + 1 + 1 + jsonl_splits + 3
    assert jsonl_splits >= 3
    assert result.manifest["counts"]["input_empty"] == 1
    ignored = f"file://{folder}/archive.jsonl.zst"
    assert result.manifest["ignored_inputs"] == {"files": 1, "by_extension": {".zst": 1}, "examples": [ignored]}
    assert any(ignored in warning for warning in result.manifest["warnings"])
    assert "ignored      1 file(s) of a type it does not read (.zst 1)" in summary(result.manifest, 1.0)


def test_parquet_rows_the_same_whatever_the_file_stores_them_as(tmp_path):
    """Columns stored as declared are kept in Arrow, the rest checked value by value: the
    rows and reasons do not depend on which (dictionary-encoded or large strings, integer
    ids, a float where an int is declared)."""
    def read(table, **kwargs):
        path = tmp_path / f"t{len(os.listdir(tmp_path))}.parquet"
        pq.write_table(table, path, row_group_size=3)
        splits = Tables(str(path)).list()
        reader = ReadTable(**kwargs)
        return pa.concat_tables(reader.process(splits.slice(i, 1)) for i in range(splits.num_rows))

    texts = ["a", "", None, "d", "e"]
    for stored in (pa.array(texts), pa.array(texts).dictionary_encode(), pa.array(texts, pa.large_string())):
        out = read(pa.table({"id": pa.array([10, 11, 12, None, 14], pa.int32()), "text": stored}),
                   columns={"text": pa.string()}, id_column="id", required=("text",), rename={"text": "body"})
        assert out.schema.field("body").type == pa.string() and out.schema.field("record_id").type == pa.string()
        ids = out.column("record_id").to_pylist()  # a null id: the row goes to the quarantine under its place
        assert ids[:3] + ids[4:] == ["10", "11", "12", "14"] and ids[3].endswith(".parquet#3")
        assert out.column("body").to_pylist() == texts
        assert [e and e.split(": ", 1)[1] for e in out.column("_row_error").to_pylist()] == [
            None, "text is empty", "text is null", "id column 'id' is null", None]
        for row, error in enumerate(out.column("_row_error").to_pylist()):
            assert error is None or error.split(": ", 1)[0].endswith(f".parquet row {row}")  # across row groups
    # An empty id is no id either (before, the row's record_id was "", which the output's
    # contract then refused with pandera's words: `str_length(1, None) failed on column record_id`).
    for text in (pa.array(["x", "y", "z"]), pa.array([1, 2, 3])):  # Arrow's path, and the value-by-value one
        out = read(pa.table({"id": ["a", "", None], "text": text}), columns={"text": pa.string()}, id_column="id",
                   as_text=("text",))
        ids = out.column("record_id").to_pylist()
        assert ids[0] == "a" and ids[1].endswith(".parquet#1") and ids[2].endswith(".parquet#2")
        assert [e and e.split(": ", 1)[1] for e in out.column("_row_error").to_pylist()] == [
            None, "id column 'id' is empty", "id column 'id' is null"]
    write(str(tmp_path), "ids.csv", b"id,text\na,x\n,y\n")
    out = ReadTable({"text": pa.string()}, id_column="id").process(Tables(str(tmp_path / "ids.csv")).list())
    assert [e and e.split(": ", 1)[1] for e in out.column("_row_error").to_pylist()] == [None, "id column 'id' is empty"]
    assert out.column("record_id").to_pylist()[1] == f"file://{tmp_path}/ids.csv@12"
    out = read(pa.table({"n": [1.0, 2.5, None, 4.0]}), columns={"n": pa.int64()})
    assert out.column("record_id").to_pylist()[0].endswith(".parquet#0")
    assert out.column("n").to_pylist() == [1, None, None, 4]
    assert [e and e.split(": ", 1)[1] for e in out.column("_row_error").to_pylist()] == [
        None, "column 'n': 2.5 is not int64", None, None]
    with pytest.raises(headrace.PipelineError, match="required column 'body' is not one of its columns"):
        ReadTable({"text": pa.string()}, required=("body",))
    with pytest.raises(headrace.PipelineError, match="a column name is empty"):
        ReadTable({"": pa.string()})  # e.g. --conf text_column= from an unset variable


@pytest.mark.parametrize("protocol", ["file", "s3", "gs"])
def test_a_parquet_file_rewritten_is_read_anew_not_from_the_footer_a_worker_kept(request, protocol, tmp_path):
    """Footers are kept parsed per worker process (a file of N row groups is N splits); a
    new version of the file is never read with the old footer (it would fail, or worse)."""
    if protocol == "file":
        url = f"file://{tmp_path}/t.parquet"
    else:
        request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[protocol])
        name = f"footers-{protocol}"
        bucket(protocol, name)
        url = f"{protocol}://{name}/t.parquet"
    read = ReadTable({"text": pa.string()})
    texts = []
    for words in (["a", "b", "c"], ["x", "y", "z", "w", "v"]):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"text": words}), sink, row_group_size=2)
        fs, path = fsspec.core.url_to_fs(url)
        fs.pipe(path, sink.getvalue().to_pybytes())
        splits = Tables(url).list()
        texts.append([t for i in range(splits.num_rows) for t in read.process(splits.slice(i, 1)).column("text").to_pylist()])
    assert texts == [["a", "b", "c"], ["x", "y", "z", "w", "v"]]


def test_a_parquet_file_without_row_groups_is_one_split_that_holds_no_records(tmp_path):
    """Not zero splits: the file would vanish from the run's accounting, and a folder of
    such files would commit an empty partition where an empty folder is refused."""
    pq.ParquetWriter(tmp_path / "none.parquet", pa.schema([("text", pa.string())])).close()
    splits = Tables(str(tmp_path)).list()
    assert splits.num_rows == 1 and splits.column("row_group").to_pylist() == [-1]
    out = ReadTable({"text": pa.string()}).process(splits)
    assert out.column("_row_error").to_pylist() == ["(no records)"] and out.column("source").to_pylist() == [
        f"file://{tmp_path}/none.parquet"]


def test_footers_read_at_once_list_the_same_splits_in_the_same_order(tmp_path):
    for index in range(12):
        pq.write_table(pa.table({"text": ["x"] * (index + 1)}), tmp_path / f"p{index:02d}.parquet", row_group_size=2)
    one_at_a_time = Tables(str(tmp_path), footer_threads=1).listing()
    at_once = Tables(str(tmp_path)).listing()
    assert one_at_a_time.records.equals(at_once.records) and one_at_a_time.sizes.equals(at_once.sizes)
    assert at_once.records.num_rows == sum(-(-(i + 1) // 2) for i in range(12))
    with pytest.raises(headrace.ConfigError, match="footer_threads must be at least 1"):
        Tables(str(tmp_path), footer_threads=0)


def test_csv_fields_are_parsed_as_their_declared_types_and_json_floats_are_not_cut_to_ints(tmp_path):
    write(str(tmp_path), "t.csv", b"id,n,score,ok,day\n"
          b"a,1,0.5,true,2026-11-28\nb,,1e3,false,\nc,x,0.25,1,2026-11-28\nd,2.5,nan,yes,28/11/2026\n")
    write(str(tmp_path), "t.jsonl", b'{"id": "a", "n": 1}\n{"id": "b", "n": 2.0}\n{"id": "c", "n": 2.5}\n')
    kinds = {"n": pa.int64(), "score": pa.float64(), "ok": pa.bool_(), "day": pa.date32()}
    splits = Tables(str(tmp_path / "t.csv")).list()
    out = ReadTable(kinds, id_column="id").process(splits).to_pylist()
    assert [row["n"] for row in out] == [1, None, None, None]
    assert [row["ok"] for row in out] == [True, False, True, None]
    assert str(out[0]["day"]) == "2026-11-28" and out[1]["day"] is None and out[1]["score"] == 1000.0
    errors = [row["_row_error"] and row["_row_error"].split(": ", 1)[1] for row in out]
    assert errors == [None, None, "column 'n': 'x' is not int64", "column 'n': '2.5' is not int64"]
    splits = Tables(str(tmp_path / "t.jsonl")).list()
    out = ReadTable({"n": pa.int64()}, id_column="id").process(splits).to_pylist()
    assert [row["n"] for row in out] == [1, 2, None]
    assert out[2]["_row_error"].endswith("column 'n': 2.5 is not int64")


def test_as_text_columns_take_a_value_of_any_type_as_its_text(tmp_path):
    import datetime
    import decimal

    write(str(tmp_path), "t.jsonl", b'{"id": "a", "n": 5, "x": true}\n{"id": "b", "n": 2.5, "x": ["w", 1]}\n'
                                    b'{"id": "c", "n": null, "x": {"k": "v"}}\n{"id": "d", "n": "", "x": "s"}\n')
    out = ReadTable({"n": pa.string(), "x": pa.string()}, id_column="id", required=("n",),
                    as_text=("n", "x")).process(Tables(str(tmp_path / "t.jsonl")).list()).to_pylist()
    assert [(row["n"], row["x"]) for row in out] == [("5", "true"), ("2.5", '["w", 1]'), (None, '{"k": "v"}'), ("", "s")]
    assert [row["_row_error"] and row["_row_error"].split(": ", 1)[1] for row in out] == [
        None, None, "n is null", "n is empty"]
    pq.write_table(pa.table({"n": pa.array([7, None], pa.int64()), "day": [datetime.date(2026, 11, 28)] * 2,
                             "price": pa.array([decimal.Decimal("1.50")] * 2, pa.decimal128(5, 2)),
                             "raw": [b"caf\xc3\xa9", b"\xff"]}), tmp_path / "t.parquet")
    columns = {"n": pa.string(), "day": pa.string(), "price": pa.string(), "raw": pa.string()}
    out = ReadTable(columns, as_text=tuple(columns)).process(Tables(str(tmp_path / "t.parquet")).list()).to_pylist()
    assert [(r["n"], r["day"], r["price"], r["raw"]) for r in out] == [
        ("7", "2026-11-28", "1.50", "caf\u00e9"), (None, "2026-11-28", "1.50", None)]
    assert out[0]["_row_error"] is None and out[1]["_row_error"].endswith("column 'raw': b'\\xff' is not string")
    # Without as_text a number in a string column is a wrong type, as before.
    out = ReadTable({"n": pa.string()}).process(Tables(str(tmp_path / "t.jsonl")).list()).to_pylist()
    assert out[0]["_row_error"].endswith("column 'n': 5 is not string")
    with pytest.raises(headrace.PipelineError, match="as_text column 'n' is not one of its pa.string"):
        ReadTable({"n": pa.int64()}, as_text=("n",))


def test_a_quoted_csv_field_may_hold_line_breaks_across_byte_ranges_and_an_open_quote_costs_one_row(tmp_path):
    """A ticket's text, a spreadsheet's cell: quoted fields with line breaks are common. Before,
    each line was a row: the row was quarantined and its next line read as a row of its own:
    `1,"first line\nsecond line, more",a` committed a row whose id was `second line`. Now a
    row is read whole, wherever the byte ranges cut it; a quote that never closes costs only
    its own line (text after a closing quote is an error, as in Python's strict reader)."""
    rng = random.Random(5)
    rows = [["id", "text", "label"]]
    for i in range(300):
        text = " ".join(rng.choice(["ticket", "line\nbreak", "a, comma", 'say "hi"', "", "x" * 200]) for _ in range(4))
        rows.append([str(i), text, rng.choice(["a", "b,c", "\r\n"])])
    lines = io.StringIO(newline="")
    csv.writer(lines, lineterminator="\r\n" if rng.random() < 0.5 else "\n").writerows(rows)
    write(str(tmp_path), "t.csv", lines.getvalue().encode())
    for split_bytes in (1024, 1500, 4096, 10**9):
        listed = Tables(str(tmp_path / "t.csv"), split_bytes=split_bytes).list()
        out = ReadTable({"text": pa.string(), "label": pa.string()}, id_column="id").process(listed).to_pylist()
        assert [[r["record_id"], r["text"], r["label"]] for r in out] == rows[1:], split_bytes
        assert not any(r["_row_error"] for r in out)
    assert listed.num_rows == 1 and Tables(str(tmp_path / "t.csv"), split_bytes=1024).list().num_rows > 20

    write(str(tmp_path), "q.csv", b'id,text\n1,"first line\nsecond line, more"\n2,"a ""quoted"" word"\n3,"open"x\n'
                                  b'4,plain\n5,"5"" screen"\n6,"never closed\n7,after\n')
    out = ReadTable({"text": pa.string()}, id_column="id").process(Tables(str(tmp_path / "q.csv")).list()).to_pylist()
    assert [(row["text"], row["_row_error"] and row["_row_error"].split(": ", 1)[1]) for row in out] == [
        ("first line\nsecond line, more", None),
        ('a "quoted" word', None),
        (None, "unreadable CSV row: ',' expected after '\"'"),
        ("plain", None),
        ('5" screen', None),
        (None, f"a quoted field is not closed (within the row's split, or {1 << 20:,} bytes): the row is read "
               "from its first line only"),
        ("after", None),
    ]


def test_every_byte_of_a_csv_file_belongs_to_exactly_one_range_s_rows_even_where_its_quotes_are_broken(tmp_path):
    """The two ranges that meet at an offset find the same boundary there, so the rows of
    all ranges tile the file: no row read twice or lost, whatever the quotes do."""
    from stages.tables import _csv_records

    rng = random.Random(11)
    pieces = ['a,b\n', '1,"open\n', '2,x\n', '3,"ok"\n', '4,"multi\nline"\n', '5,"bad"x,y\n', '6,5" screen\n', '"\n',
              '\n', '7,""""\n', '8,"a\r\nb"\r\n']
    for trial in range(400):
        data = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))).encode()
        path = write(str(tmp_path), "g.csv", data)
        step = rng.randint(1, 60)
        spans = sorted((offset, len(row)) for start in range(0, len(data), step)
                       for offset, row, _ in _csv_records({"source": "file://" + path, "compression": None,
                                                           "start": start, "stop": min(start + step, len(data))}))
        assert [offset for offset, _ in spans] == [sum(n for _, n in spans[:i]) for i in range(len(spans))], (data, step)
        assert sum(n for _, n in spans) == len(data), (data, step)


def test_an_empty_csv_file_holds_no_records_and_a_blank_header_line_is_named(tmp_path):
    write(str(tmp_path), "empty.csv", b"")
    write(str(tmp_path), "blank.csv", b"\nid,text\nx,y\n")
    reader = ReadTable({"text": pa.string()}, id_column="id")
    out = reader.process(Tables(str(tmp_path / "empty.csv")).list())
    assert out.column("_row_error").to_pylist() == [NO_RECORDS]  # as an empty JSON Lines file
    with pytest.raises(ValueError, match="blank.csv: the first line is blank; a CSV file's first line is its header"):
        reader.process(Tables(str(tmp_path / "blank.csv")).list())


def test_a_split_that_fails_whole_names_its_file_in_the_message(tmp_path):
    """A truncated gzip file fails with Python's EOFError, which names nothing."""
    from headrace.envelope import describe_exception

    data = gzip.compress(b"".join(b'{"id": %d, "text": "row"}\n' % i for i in range(500)))
    write(str(tmp_path), "cut.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(EOFError) as failure:
        ReadTable({"text": pa.string()}).process(Tables(str(tmp_path / "cut.jsonl.gz")).list())
    assert describe_exception(failure.value)[1] == (
        f"Compressed file ended before the end-of-stream marker was reached (reading file://{tmp_path}/cut.jsonl.gz)")


def test_a_named_pipe_among_table_files_is_refused_by_its_reader_not_waited_on(tmp_path):
    """Opening a named pipe waits for a writer: a `.parquet` one hung the listing (its
    footer) and a `.jsonl` or `.csv` one the reading task, for ever."""
    import threading

    from headrace.storage import NotARegularFile

    write(str(tmp_path), "rows.jsonl", b'{"text": "a row"}\n')
    pipes = [tmp_path / name for name in ("pipe.csv", "pipe.jsonl", "pipe.parquet")]
    for pipe in pipes:
        os.mkfifo(pipe)
    outcome = {}

    def list_and_read():
        splits = Tables(str(tmp_path)).list()
        outcome["sources"] = sorted(splits.column("source").to_pylist())
        for index in range(splits.num_rows):
            try:
                outcome[splits["source"][index].as_py()] = ReadTable({"text": pa.string()}).process(splits.slice(index, 1))
            except NotARegularFile as exc:
                outcome[splits["source"][index].as_py()] = str(exc)

    thread = threading.Thread(target=list_and_read, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"waited on a named pipe: {outcome}"
    assert outcome["sources"] == [f"file://{p}" for p in pipes] + [f"file://{tmp_path}/rows.jsonl"]
    for pipe in pipes:
        assert outcome[f"file://{pipe}"] == f"{pipe} is a named pipe, not a regular file: it is not read"
    assert outcome[f"file://{tmp_path}/rows.jsonl"].column("text").to_pylist() == ["a row"]


def test_a_json_file_that_is_one_document_is_refused_whole_not_read_as_lines(tmp_path):
    """``json.dump(rows, indent=2)`` makes lines of which some parse as objects: read as JSON
    Lines it would output those and quarantine the rest for reasons that hide the cause.
    Every split of such a file fails whole, saying what the file is."""
    rows = [{"id": i, "text": f"row {i} " + "x" * 40} for i in range(40)]
    write(str(tmp_path), "pretty.json", json.dumps(rows, indent=2).encode())
    write(str(tmp_path), "pretty.json.gz", gzip.compress(json.dumps({"rows": rows}, indent=1).encode()))
    reader = ReadTable({"text": pa.string()}, id_column="id")
    for name, what in (("pretty.json", "array"), ("pretty.json.gz", "object")):
        splits = Tables(str(tmp_path / name), split_bytes=1024).list()
        assert splits.num_rows == (1 if name.endswith(".gz") else -(-os.path.getsize(tmp_path / name) // 1024))
        for i in range(splits.num_rows):
            with pytest.raises(ValueError, match=f"{name} is one JSON {what} over several lines, not JSON Lines"):
                reader.process(splits.slice(i, 1))
    # A first record longer than the bytes looked at is a record, not the start of a document.
    from stages.tables import MAX_FIRST_LINE

    big = json.dumps({"id": 1, "text": "w " * MAX_FIRST_LINE}).encode() + b"\n" + b'{"id": 2, "text": "small"}\n'
    write(str(tmp_path), "big.jsonl", big)
    out = reader.process(Tables(str(tmp_path / "big.jsonl")).list())
    assert out.column("record_id").to_pylist() == ["1", "2"] and out.column("_row_error").null_count == 2
    # A malformed first line is that line's error; one that is an array or a null too, named in JSON's words.
    write(str(tmp_path), "odd.jsonl", b'{"id": 0, "text": "cut\n{"id": 1, "text": "fine"}\n[1, 2]\nnull\n"text"\n')
    out = reader.process(Tables(str(tmp_path / "odd.jsonl")).list()).to_pylist()
    assert [row["_row_error"] and row["_row_error"].split(": ", 2)[-1].split(":")[0] for row in out] == [
        "Invalid control character at", None, "a JSON array, not an object", "a JSON null, not an object",
        "a JSON string, not an object"]


def test_columns_named_by_hive_style_folders_fill_the_columns_a_file_lacks(tmp_path):
    """``lang=en/year=2024/part-0.parquet`` (Spark's partitionBy, pyarrow.dataset's hive
    partitioning): the folder's value, as the declared type, for every row of the file;
    Hive's null folder is null; a column the file (or the JSON record) has wins; a value
    that is not of the column's type fails the split, naming the folder."""
    import pyarrow.dataset as pads

    table = pa.table({"id": ["a", "b", "c", "d"], "text": ["t1", "t2", "t3", "t4"],
                      "lang": ["en", "en", "fr", None], "year": [2024, 2025, 2025, 2025]})
    pads.write_dataset(table, tmp_path / "pq", format="parquet", partitioning=["lang", "year"],
                       partitioning_flavor="hive")
    write(str(tmp_path / "js" / "lang=de" / "year=2023"), "p.jsonl",
          b'{"id": "e", "text": "t5"}\n{"id": "f", "text": "t6", "lang": "own"}\n')
    write(str(tmp_path / "csv" / "lang=es%2Fmx" / "year=2022"), "p.csv", b"id,text\nh,t8\n")
    write(str(tmp_path / "bad" / "year=soon"), "p.csv", b"id,text\ng,t7\n")
    reader = ReadTable({"text": pa.string(), "lang": pa.string(), "year": pa.int64()}, id_column="id")

    def rows(folder):
        splits = Tables(str(tmp_path / folder)).list()
        out = pa.concat_tables(reader.process(splits.slice(i, 1)) for i in range(splits.num_rows))
        assert out.schema.field("year").type == pa.int64() and out.column("_row_error").null_count == out.num_rows
        return sorted(zip(*(out.column(c).to_pylist() for c in ("record_id", "lang", "year"))))

    assert rows("pq") == [("a", "en", 2024), ("b", "en", 2025), ("c", "fr", 2025), ("d", None, 2025)]
    assert rows("js") == [("e", "de", 2023), ("f", "own", 2023)]
    assert rows("csv") == [("h", "es/mx", 2022)]
    with pytest.raises(ValueError, match="folder year=soon: 'soon' is not int64"):
        reader.process(Tables(str(tmp_path / "bad")).list())
    write(str(tmp_path / "nolang" / "year=2020"), "p.csv", b"id,text\ng,t7\n")
    with pytest.raises(KeyError, match="has no column 'lang'"):  # in neither the file nor a folder
        reader.process(Tables(str(tmp_path / "nolang")).list())


def test_a_file_column_named_as_a_split_column_is_read_and_kept(ray_cluster, tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "rows": [3, 4], "format": ["x", "y"]}), tmp_path / "t.parquet")
    pipeline = Pipeline(
        name="tables", source=Tables(str(tmp_path / "t.parquet")),
        stages=[ReadTable({"text": pa.string(), "rows": pa.int64(), "format": pa.string()})],
        sink=output_sink(str(tmp_path / "out")), columns=["record_id", "text", "rows", "format"],
    )
    headrace.run(pipeline, DS, QUIET)
    out = pq.read_table(tmp_path / "out" / f"ds={DS}").sort_by("text")
    assert out.column("rows").to_pylist() == [3, 4] and out.column("format").to_pylist() == ["x", "y"]


def test_a_missing_column_quarantines_the_split_and_says_which(ray_cluster, tables, tmp_path):
    folder, _, _ = tables
    pipeline = Pipeline(
        name="tables", source=Tables(str(folder / "table.csv")),
        stages=[ReadTable({"body": pa.string()})], sink=output_sink(str(tmp_path / "out")),
        max_quarantine_fraction=1.0,
    )
    headrace.run(pipeline, DS, QUIET)
    quarantine = pq.read_table(tmp_path / "out" / "_quarantine" / f"ds={DS}").to_pylist()
    assert len(quarantine) == 1 and "has no column 'body' (it has id, text)" in quarantine[0]["message"]


class Fussy(Stage):
    """Fails on the one row whose text says so; the rows around it carry on."""

    needs = ("text",)
    adds = {"loud": pa.string()}

    def process(self, batch):
        if any("boom" in t for t in batch.column("text").to_pylist()):
            raise ValueError("no booms")
        return batch.append_column("loud", pc.utf8_upper(batch.column("text")))


def test_a_row_failing_after_the_reader_is_quarantined_under_its_own_id(ray_cluster, tmp_path):
    """Rows of one split fail in a later stage and in the schema check: the quarantine's
    record_id is each row's id, as the output's would be, not the split's; a split that
    fails whole is there under its split id (it has no rows)."""
    import pandera.polars as pap
    import polars as pl

    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["fine", "boom", "fine too", "x"]}),
                   tmp_path / "t.parquet")
    pq.write_table(pa.table({"id": ["e"], "other": ["no text column"]}), tmp_path / "u.parquet")
    schema = pap.DataFrameSchema({"loud": pap.Column(pl.Utf8, pap.Check.str_length(min_value=2))}, strict=False)
    pipeline = Pipeline(
        name="tables", source=Tables(str(tmp_path / "*.parquet")),
        stages=[ReadTable({"text": pa.string()}, id_column="id"), Fussy()], schema=schema,
        sink=output_sink(str(tmp_path / "out")), columns=["record_id", "loud"], max_quarantine_fraction=1.0,
    )
    headrace.run(pipeline, DS, QUIET)
    assert sorted(pq.read_table(tmp_path / "out" / f"ds={DS}").column("record_id").to_pylist()) == ["a", "c"]
    quarantine = {q["record_id"]: q for q in pq.read_table(tmp_path / "out" / "_quarantine" / f"ds={DS}").to_pylist()}
    splits = Tables(str(tmp_path / "u.parquet")).list()
    assert sorted(quarantine) == sorted(["b", "d", splits.column("split_id")[0].as_py()])
    assert quarantine["b"]["stage"] == "Fussy" and quarantine["b"]["message"] == "no booms"
    assert quarantine["d"]["stage"].startswith("schema") and "str_length" in quarantine["d"]["message"]


def test_each_split_is_one_call_of_the_reader(ray_cluster, tables, tmp_path):
    folder, _, _ = tables
    result = headrace.run(read_only(folder, tmp_path / "out"), DS, QUIET)
    batches = sum(node["batches"].get("ReadTable", 0) for node in result.manifest["nodes"])
    assert batches == result.manifest["counts"]["input"]  # one split, one call


def test_the_splits_of_a_file_stay_together_in_file_order_largest_file_first():
    from headrace.runner import largest_first

    splits = pa.table({"split_id": list("abcdefg"), "source": ["s", "s", "s", "big", "big", "none", "s"]})
    ordered, sizes = largest_first(splits, pa.array([10, 12, 9, 40, 38, None, 11], pa.int64()))
    assert ordered.column("split_id").to_pylist() == ["d", "e", "a", "b", "c", "g", "f"]
    assert sizes.to_pylist() == [40, 38, 10, 12, 9, 11, None]


def test_small_splits_share_a_task_up_to_block_bytes_and_large_ones_go_alone():
    from headrace.ray_adapter import block_ranges

    assert block_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]  # by count where sizes are unknown
    sizes = [100, 60, 50, 30, None, 10, 10, 10, 10]  # largest first, unknown last but one
    assert block_ranges(9, 3, sizes, block_bytes=100) == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 8), (8, 9)]
    assert block_ranges(0, 3, [], block_bytes=100) == []
    assert Tables("x", split_bytes=4096).block_bytes == 4096


class Shout(Stage):
    """A CPU task stage: Ray Data fuses it into the CPU actor pool after it."""

    needs = ("text",)
    adds = {"loud": pa.string()}
    batch_size = 16

    def process(self, batch):
        return batch.append_column("loud", pc.utf8_upper(batch.column("text")))


class Measure(Stage):
    """A stateful stage on CPU: an actor pool, fed by ReadTable's rows through Shout."""

    needs = ("loud",)
    adds = {"length": pa.int64()}
    batch_size = 8

    def setup(self, context):
        self.ready = True

    def process(self, batch):
        return batch.append_column("length", pc.utf8_length(batch.column("loud")).cast(pa.int64()))


def test_a_model_pool_after_a_table_reader_takes_its_batch_size_of_rows_per_call(ray_cluster, tmp_path):
    """The rows a split makes (a 65,536-row group) must not become one call of the model:
    only where the stages before a pool start at the source (files) is a call one
    upstream batch whole; after ReadTable a call is the pool's batch_size of rows."""
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), tmp_path / "one.parquet")
    pipeline = Pipeline(
        name="tables", source=Tables(str(tmp_path / "one.parquet")),
        stages=[ReadTable({"text": pa.string()}), Shout(), Measure()],
        sink=output_sink(str(tmp_path / "out")), columns=["record_id", "length"],
    )
    result = headrace.run(pipeline, DS, QUIET)
    calls = sum(node["batches"].get("Measure", 0) for node in result.manifest["nodes"])
    assert result.manifest["counts"]["output"] == 100
    assert calls >= 100 // 8, calls


class WhichActor(Stage):
    """A stateful stage in a pool of two actors: each row says which actor's process took it."""

    needs = ("text",)
    adds = {"pid": pa.int64()}
    batch_size = 8
    concurrency = 2

    def setup(self, context):
        self.pid = os.getpid()

    def process(self, batch):
        import time

        # Work to share: 50 calls, 5 s for one actor, far longer than the two actors'
        # starts differ by (Ray starts a pool's actors asynchronously).
        time.sleep(0.1)
        return batch.append_column("pid", pa.repeat(pa.scalar(self.pid, pa.int64()), batch.num_rows))


def test_one_large_row_group_is_shared_by_every_actor_of_the_pool_after_the_reader(ray_cluster, tmp_path):
    """A row group is one split and ReadTable makes one block of it; an actor pool takes a
    block whole, so a file of one large row group kept one actor busy while the others
    idled. The reader's blocks are cut into blocks of the pool's call size."""
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(400)]}), tmp_path / "one.parquet")
    assert pq.ParquetFile(tmp_path / "one.parquet").metadata.num_row_groups == 1
    pipeline = Pipeline(
        name="tables", source=Tables(str(tmp_path / "one.parquet")),
        stages=[ReadTable({"text": pa.string()}), WhichActor()],
        sink=output_sink(str(tmp_path / "out")), columns=["record_id", "pid"],
    )
    result = headrace.run(pipeline, DS, QUIET)
    assert result.manifest["counts"]["output"] == 400
    rows = pq.read_table(tmp_path / "out" / f"ds={DS}")
    assert sorted(int(i.rsplit("#", 1)[1]) for i in rows.column("record_id").to_pylist()) == list(range(400))
    shares = rows.column("pid").value_counts().to_pylist()
    assert len(shares) == 2, shares


def test_a_pool_after_the_reader_starts_no_more_actors_than_the_cut_makes_blocks(ray_cluster, tmp_path):
    """A pool's minimum is clamped to the blocks it can get: after a cut, a Parquet
    split's rows (from its footer) over the call size. Five rows are one block of 8."""
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(5)]}), tmp_path / "few.parquet")
    pipeline = Pipeline(
        name="tables", source=Tables(str(tmp_path / "few.parquet")),
        stages=[ReadTable({"text": pa.string()}), WhichActor()],
        sink=output_sink(str(tmp_path / "out")), columns=["record_id", "pid"],
    )
    result = headrace.run(pipeline, DS, QUIET)
    assert result.manifest["counts"]["output"] == 5
    assert result.manifest["utilisation"]["WhichActor"]["actors"] == 1  # not the 2 it asks for


def test_a_pool_minimum_above_what_a_small_text_table_makes_is_no_warning(ray_cluster, tmp_path):
    """A JSON Lines range's rows are not known before reading, so the pool starts its
    minimum of 2 for 3 rows (one block); Ray's warning about it is not passed on."""
    import warnings

    write(str(tmp_path), "few.jsonl", b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(3)))
    pipeline = Pipeline(
        name="tables", source=Tables(str(tmp_path / "few.jsonl")),
        stages=[ReadTable({"text": pa.string()}), WhichActor()],
        sink=output_sink(str(tmp_path / "out")), columns=["record_id", "pid"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = headrace.run(pipeline, DS, QUIET)
    assert result.manifest["counts"]["output"] == 3
    assert result.manifest["utilisation"]["WhichActor"]["actors"] == 2
    assert not [w for w in caught if "minimum number of concurrent actors" in str(w.message)]


def test_the_blocks_a_cut_makes_are_known_only_where_every_split_says_its_rows(tmp_path):
    from headrace.ray_adapter import blocks_after_cut

    splits = pa.table({"rows": pa.array([100, 0, 7, 9], pa.int64())})
    assert blocks_after_cut(splits, [(0, 1), (1, 2), (2, 4)], "rows", 8) == 13 + 1 + 2
    assert blocks_after_cut(splits.set_column(0, "rows", pa.array([100, -1, 7, 9])), [(0, 4)], "rows", 8) is None
    assert blocks_after_cut(splits, [(0, 4)], None, 8) is None  # a source without row counts (files)
    pq.write_table(pa.table({"text": ["a"] * 10}), tmp_path / "t.parquet", row_group_size=4)
    write(str(tmp_path), "t.jsonl", b'{"text": "b"}\n')
    listed = Tables(str(tmp_path)).list()
    assert sorted(zip(listed.column("format").to_pylist(), listed.column(Tables.rows_column).to_pylist())) == [
        ("jsonl", -1), ("parquet", 2), ("parquet", 4), ("parquet", 4)]  # a text range's rows are not known


def test_the_reader_is_cut_to_the_call_size_of_the_pool_after_it_on_its_device():
    from headrace.placement import Placement
    from headrace.ray_adapter import CUT_ROWS, cut_rows

    shout, measure = Shout(), Measure().with_(gpu_batch_size=512)
    tasks = Placement("Shout", None, 1.0, 0.0, "cpu", 1)
    on_cpu, on_gpu = Placement("Measure", (1, 2), 1.0, 0.0, "cpu", 1), Placement("Measure", (1, 1), 1.0, 1.0, "cuda", 1)
    assert cut_rows([shout, measure], [tasks, on_cpu]) == 8
    assert cut_rows([shout, measure], [tasks, on_gpu]) == 512
    assert cut_rows([shout, measure.with_(batch_size=None)], [tasks, on_cpu]) == CUT_ROWS
    assert cut_rows([shout], [tasks]) is None  # no pool: blocks stay whole


def test_table_embeddings_killed_mid_run_resumes_to_exactly_a_clean_runs_rows(ray_cluster, tmp_path):
    import numpy as np

    from pipelines.table_embeddings import pipeline as table_embeddings
    from test_resume import kill_when_staged

    rng = random.Random(3)
    shards = tmp_path / "shards"
    shards.mkdir()
    texts = [sentence(rng, rng.randint(20, 120)) for _ in range(192)]
    texts[17] = ""  # quarantined: an empty text
    pq.write_table(pa.table({"text": texts}), shards / "part-0.parquet", row_group_size=12)
    clean_out, output = tmp_path / "clean", tmp_path / "out"
    headrace.run(table_embeddings(input=str(shards), output=str(clean_out), rows_per_file=24, embed_precision="fp32"),
                 DS, QUIET)

    # fp32 keeps the model busy long enough to be killed mid-run (bf16 is 2.5x faster where the CPU has it).
    conf = [f"input={shards}", f"output={output}", "headrace.progress=false", "rows_per_file=24", "embed_precision=fp32"]
    args = [*__import__("conftest").HEADRACE, "submit", "pipelines/table_embeddings.py", "--ds", DS]
    for pair in conf:
        args += ["--conf", pair]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    kill_when_staged(args, env, str(output / "_staging" / f"ds={DS}" / "progress"), parts=1)
    assert not (output / f"ds={DS}").exists()  # nothing was published by the killed run
    import subprocess

    # On 2 CPU slots, as a 2-CPU cluster without GPUs has them: before, the model's CPU actors
    # took both and the reader's tasks waited for ever (engine settings do not stop a resume).
    resumed = subprocess.run([*args, "--num-cpus", "2"], cwd=__import__("conftest").ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "leaving a CPU for the ReadTable tasks" in resumed.stderr

    def rows(path):
        table = pq.read_table(path / f"ds={DS}")
        keys = zip(table.column("record_id").to_pylist(), table.column("chunk_index").to_pylist())
        return dict(zip(keys, zip(table.column("text").to_pylist(), table.column("embedding").to_pylist())))

    clean, again = rows(clean_out), rows(output)
    assert clean.keys() == again.keys() and len(clean) >= 191
    assert all(clean[k][0] == again[k][0] for k in clean)
    assert min(float(np.dot(clean[k][1], again[k][1])) for k in clean) >= 0.9999
    quarantine = pq.read_table(output / "_quarantine" / f"ds={DS}").to_pylist()
    assert len(quarantine) == 1 and "row 17: text is empty" in quarantine[0]["message"]


# -- WARC and WET ----------------------------------------------------------------------

def _warc(path, records, gzip):
    """Write ``records`` ((kind, url, content type, body)) with warcio; returns each record's offset."""
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=gzip)
        writer.write_record(writer.create_warcinfo_record(os.path.basename(path), {"software": "headrace tests"}))
        offsets = []
        for kind, url, content_type, body in records:
            offsets.append(out.tell())
            if kind == "response":
                http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
                record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            else:
                record = writer.create_warc_record(url, kind, payload=io.BytesIO(body),
                                                   warc_content_type=content_type)
            writer.write_record(record)
        return offsets


@pytest.fixture(scope="module")
def warcs(tmp_path_factory):
    """A per-record gzip WARC and a plain one with known good and broken records; returns
    (folder, {good url: its text}, {url: the reason its record is quarantined})."""
    rng = random.Random(11)
    folder = tmp_path_factory.mktemp("warcs")
    good, bad = {}, {}

    def page(url):
        text = f"{url} {sentence(rng, 30)}"
        good[url] = text
        return ("response", url, "text/html; charset=utf-8",
                f"<html><head><script>var x;</script></head><body><nav>menu</nav><p>{text}</p></body></html>".encode())

    records = [page(f"http://example.org/{i}") for i in range(12)]
    records.insert(4, ("request", "http://example.org/3", "application/http; msgtype=request", b"GET /3 HTTP/1.1\r\n\r\n"))
    records.insert(6, ("response", "http://example.org/logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(200)))
    bad["http://example.org/logo.png"] = "payload is image/png, not text"
    offsets = _warc(folder / "crawl.warc.gz", records, gzip=True)
    data = bytearray((folder / "crawl.warc.gz").read_bytes())
    seventh = records.index(next(r for r in records if r[1] == "http://example.org/7"))
    crc_at = offsets[seventh + 1] - 8  # the gzip member's CRC-32 (its last 8 bytes: CRC-32, size)
    data[crc_at:crc_at + 4] = bytes(b ^ 0xFF for b in data[crc_at:crc_at + 4])
    del data[-20:]  # the last record is cut off, as by an interrupted download
    (folder / "crawl.warc.gz").write_bytes(bytes(data))
    for url, reason in (("http://example.org/7", "corrupt gzip member"), ("http://example.org/11", "truncated gzip member")):
        good.pop(url)
        bad[url] = reason

    plain = [page(f"http://example.net/{i}") for i in range(6)]
    plain.insert(3, ("conversion", "http://example.net/wet", "text/plain", b"Text a WET file extracted."))
    good["http://example.net/wet"] = "Text a WET file extracted."
    offsets = _warc(folder / "crawl.warc", plain, gzip=False)
    data = bytearray((folder / "crawl.warc").read_bytes())
    flip = offsets[2 + 1] - 10  # a byte inside the third page's HTML: its block digest no longer matches
    data[flip] ^= 0x20
    cut = offsets[5 + 1] - 60  # 30 bytes of the fifth page (after the WET record) go missing: it ends where its length says it cannot
    del data[cut:cut + 30]
    del data[-40:]
    (folder / "crawl.warc").write_bytes(bytes(data))
    for url, reason in (("http://example.net/2", "WARC-Block-Digest does not match"),
                        ("http://example.net/4", "does not end where its Content-Length"),
                        ("http://example.net/5", "truncated record: Content-Length")):
        good.pop(url)
        bad[url] = reason
    return folder, good, bad


def test_every_warc_record_is_read_once_whatever_the_byte_ranges_and_broken_ones_alone(warcs):
    from stages.tables import _warc_rows

    folder, good, bad = warcs
    for split_bytes in (1024, 1500, 4096, 1 << 20):
        texts, errors = {}, []
        for split in Tables(str(folder), split_bytes=split_bytes).list().to_pylist():
            values, positions, errs = _warc_rows(split, ["url", "text", "warc_type", "http_status"], True)
            for url, text, error, position in zip(values["url"], values["text"], errs, positions):
                if error is None:
                    assert url not in texts, (split_bytes, url)
                    texts[url] = text
                else:
                    errors.append(f"{split['source']} offset {position}: {error}")
        assert texts == good, split_bytes  # the HTML's visible text: no script, no navigation
        assert len(errors) == len(bad), (split_bytes, errors)
        for reason in bad.values():
            assert sum(reason in e for e in errors) == 1, (split_bytes, reason, errors)


def test_warc_records_through_a_run_quarantined_with_their_offset(ray_cluster, warcs, tmp_path):
    folder, good, bad = warcs
    pipeline = Pipeline(
        name="warc",
        source=Tables(str(folder), split_bytes=1024),
        stages=[ReadTable({"text": pa.string(), "url": pa.string(), "http_status": pa.int64()}, id_column="url")],
        sink=output_sink(str(tmp_path / "out")),
        columns=["record_id", "url", "http_status", "text"],
    )
    result = headrace.run(pipeline, DS, QUIET)
    table = pq.read_table(tmp_path / "out" / f"ds={DS}").to_pylist()
    assert {row["record_id"]: row["text"] for row in table} == good and len(table) == len(good)
    assert {row["http_status"] for row in table} == {200, None}  # None: the WET conversion record
    messages = [q["message"] for q in pq.read_table(tmp_path / "out" / "_quarantine" / f"ds={DS}").to_pylist()]
    assert len(messages) == len(bad)
    for reason in bad.values():
        assert any(reason in m and ".warc" in m and " offset " in m for m in messages), (reason, messages)
    sizes = sum(-(-os.path.getsize(folder / name) // 1024) for name in ("crawl.warc.gz", "crawl.warc"))
    assert result.manifest["counts"]["input"] == sizes  # splits of 1 KiB, not files


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_table_files_on_a_bucket_give_the_rows_and_errors_they_give_on_a_disk(request, protocol, tables, warcs):
    """Every format and every kind of bad row, read by ReadTable from S3 (moto) and GCS (the
    emulator) as from a local disk. Before, no JSON Lines file on a bucket was read (its
    first split asked fsspec's file for ``readline(64)``, which takes no size: `TypeError`,
    every split of the file quarantined), nor a plain WARC or WET file (the same, for each
    record's header)."""
    request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[protocol])
    name = f"hr-table-formats-{protocol}"
    fs = bucket(protocol, name)
    folders = {"warcs": warcs[0], "tables": tables[0]}
    fs.pipe({f"{name}/{kind}/{file}": (folder / file).read_bytes()
             for kind, folder in folders.items() for file in os.listdir(folder)})
    readers = {"tables": ReadTable({"text": pa.string()}, id_column="id", required=("text",)),
               "warcs": ReadTable({"text": pa.string(), "url": pa.string(), "http_status": pa.int64()}, id_column="url")}

    def rows(url, kind, split_bytes):
        splits = Tables(url, split_bytes=split_bytes).list()
        out = pa.concat_tables([readers[kind].process(splits.slice(i, 1)) for i in range(splits.num_rows)])
        return sorted(json.dumps(row, sort_keys=True, default=str).replace(url, "ROOT")
                      for row in out.drop_columns(["split_id"]).to_pylist())  # split_id: a hash of the URI

    for kind, folder in folders.items():
        for split_bytes in (1024, 1 << 20):
            on_disk = rows(f"file://{folder}", kind, split_bytes)
            assert any('"_row_error": null' in row for row in on_disk) and any('"_row_error": "' in row for row in on_disk)
            assert rows(f"{protocol}://{name}/{kind}", kind, split_bytes) == on_disk, (kind, split_bytes)


def test_a_text_split_on_s3_is_fetched_once_not_a_block_per_line(s3_server, monkeypatch):
    """fsspec's files find a line by reading a whole block (s3fs's: 50 MB) and copying it, and
    fetch a block past every read: a JSON Lines or CSV file on S3 was fetched twice over and
    read at about 2.5 ms a line (a 54 MB file took longer than 16 minutes). Counted at a proxy:
    each text file is fetched once, give or take a header's read."""
    import s3fs

    from fixtures.flaky_s3_proxy import FlakyS3Proxy

    fs = bucket("s3", "hr-table-fetches")
    texts = [f"row {i} " + "weir " * (i % 50) for i in range(20_000)]
    data = {"lines.jsonl": "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)).encode(),
            "table.csv": ("id,text\n" + "".join(f"r{i},{t}\n" for i, t in enumerate(texts))).encode()}
    # A wide Parquet file: only the columns asked for are fetched (before: 50 MB past each read, the file whole).
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(20_000)], "text": texts,
                             **{f"score_{c}": [float(i * c) for i in range(20_000)] for c in range(8)}}),
                   sink, row_group_size=5_000)
    data["wide.parquet"] = sink.getvalue().to_pybytes()
    fs.pipe({f"hr-table-fetches/{name}": body for name, body in data.items()})
    read = ReadTable({"text": pa.string()}, id_column="id")
    with FlakyS3Proxy(s3_server["AWS_ENDPOINT_URL"], {}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            for name, body in data.items():
                splits = Tables(f"s3://hr-table-fetches/{name}").list()
                before = proxy.bytes_out
                assert sum(read.process(splits.slice(i, 1)).num_rows for i in range(splits.num_rows)) == 20_000
                fetched = proxy.bytes_out - before
                most = len(body) // 2 if name.endswith(".parquet") else len(body) + (1 << 16)
                assert fetched <= most, (name, fetched, len(body))  # before: twice the file, or all of it
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
