"""The README's snippets for reading the output run as written, and see only committed rows."""

import os
import re

import headrace
from conftest import QUIET, ROOT, write
from headrace import loader

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def readme_snippets() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Reading the output", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_reading_snippet_of_the_readme_sees_exactly_the_committed_rows(ray_cluster, tmp_path):
    factory = loader.load(WORD_COUNT)
    out = str(tmp_path / "out")
    for day, count in (("2026-10-20", 3), ("2026-10-21", 4)):
        for index in range(count):
            write(str(tmp_path / day), f"doc-{index}.txt", ("word " * (index + 1)).encode())
        headrace.run(factory.build(input=str(tmp_path / day), output=out), day, QUIET)
    # A rerun of the first date replaces it; a killed run's staged files are never read.
    headrace.run(factory.build(input=str(tmp_path / "2026-10-20"), output=out), "2026-10-20", QUIET)
    write(os.path.join(out, "_staging", "ds=2026-10-22", "data"), "part-000-00000.parquet", b"not committed")

    snippets = readme_snippets()
    assert len(snippets) == 4
    namespace = {"OUT": out, "DS": "2026-10-21"}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)

    assert namespace["table"].num_rows == 4 and set(namespace["table"].column("ds").to_pylist()) == {"2026-10-21"}
    assert namespace["everything"].num_rows == 7
    assert namespace["recent"].height == 4
    assert namespace["data"].num_rows == 7
    assert namespace["frame"].height == 7 and sorted(set(namespace["frame"]["ds"].cast(str))) == ["2026-10-20", "2026-10-21"]
    assert [(str(ds), n) for ds, n in namespace["counts"]] == [("2026-10-20", 3), ("2026-10-21", 4)]


def test_a_script_that_reads_the_output_and_exits_at_once_exits_0(tmp_path):
    """A scheduler's task that reads a partition and exits: Arrow's dataset scanner let go
    of the Python file objects it read through on its own threads after returning, and an
    interpreter exiting at that moment aborted (exit 134, "terminate called without an
    active exception"; apache/arrow#34314), in about half of such runs here. A resumed run's
    driver read staged files the same way (Storage.read_parquet)."""
    import json
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    (out / "ds=2026-10-20").mkdir(parents=True)
    pq.write_table(pa.table({"word": ["weir"] * 500, "n": list(range(500))}), out / "ds=2026-10-20" / "part-0.parquet")
    (out / "ds=2026-10-20" / "_SUCCESS").write_text(json.dumps({"files": [{"path": "part-0.parquet"}]}))
    script = (
        "import fsspec, headrace\n"
        "from headrace.storage import Storage\n"
        f"assert headrace.read({str(out)!r}, ds='2026-10-20').num_rows == 500\n"
        f"assert headrace.scan({str(out)!r}).collect().height == 500\n"
        f"assert Storage(fsspec.filesystem('file')).read_parquet({str(out / 'ds=2026-10-20' / 'part-0.parquet')!r}).num_rows == 500\n"
    )
    codes = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT).returncode
             for _ in range(8)]
    assert codes == [0] * 8


def test_columns_are_read_by_name_and_a_column_some_dates_lack_is_null_there(tmp_path):
    """An output whose pipeline gained a column (a new stage) holds dates with and without
    it: that column is null in the older dates. Before, a name given as a string was read
    as its letters (KeyError: Field "t" does not exist), ``columns=[]`` read every column,
    and a name no date has was Arrow's KeyError, which said nothing of the output's columns."""
    import json

    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    def partition(fs, root, day, table):
        fs.makedirs(f"{root}/ds={day}", exist_ok=True)
        with fs.open(f"{root}/ds={day}/part-0.parquet", "wb") as handle:
            pq.write_table(table, handle)
        fs.pipe_file(f"{root}/ds={day}/_SUCCESS", json.dumps({"files": [{"path": "part-0.parquet"}]}).encode())

    memory = fsspec.filesystem("memory")
    # On a disk (Arrow's reader) and on any other store (bytes fetched and parsed). Glob
    # characters in a local output's name: the dates were found by a glob of it, which took
    # `[1]` as a pattern ("no committed partition"; on other stores such names are exit 2).
    for fs, root, out in ((fsspec.filesystem("file"), str(tmp_path / "out[1]"), str(tmp_path / "out[1]")),
                          (memory, "/reading-out", "memory://reading-out")):
        partition(fs, root, "2026-10-20", pa.table({"text": ["a", "b"]}))
        partition(fs, root, "2026-10-21", pa.table({"text": ["c"], "n": [7]}))
        # A date a run was publishing when it was killed (on a bucket: copied, no manifest yet).
        partition(fs, root, "2026-10-22", pa.table({"text": ["not committed"]}))
        fs.rm_file(f"{root}/ds=2026-10-22/_SUCCESS")

        both = headrace.read(out, columns=["text", "n", "ds"])
        assert both.column_names == ["text", "n", "ds"]
        assert sorted(zip(*both.to_pydict().values())) == [
            ("a", None, "2026-10-20"), ("b", None, "2026-10-20"), ("c", 7, "2026-10-21")]
        assert headrace.read(out, columns="text").column("text").to_pylist() == ["a", "b", "c"]
        assert headrace.read(out, ds="2026-10-21", columns=[]).num_rows == 1
        with pytest.raises(KeyError, match=r"no column 'nope': its columns are n, text, and ds"):
            headrace.read(out, columns=["text", "nope"])


def test_the_logical_date_and_engine_settings_from_python_are_checked_before_anything_runs(tmp_path):
    """Before, headrace.run took any string: ds="2026-13-01" published a partition of no
    date, "2026/11/01" one in nested folders that no reader of ds=* finds, and
    headrace.read(ds=...) looked there. A date object will do as well."""
    import datetime as dt
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    pipeline = loader.load(WORD_COUNT).build(input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    for bad in ("2026-13-01", "2026/11/01", "../2026-11-01", ""):
        with pytest.raises(headrace.ConfigError, match="expected a date as YYYY-MM-DD"):
            headrace.run(pipeline, bad, QUIET)  # refused before listing: the input does not even exist
        with pytest.raises(headrace.ConfigError, match="expected a date as YYYY-MM-DD"):
            headrace.read(str(tmp_path / "out"), ds=bad)
    # Engine settings given from Python are checked as the CLI's are (before: num_cpus=0
    # ran on every core, a quality gate of 7 was no gate).
    for engine, message in ((headrace.EngineConf(num_cpus=0), "num_cpus=0"),
                            (headrace.EngineConf(max_quarantine_fraction=7), "max_quarantine_fraction=7")):
        with pytest.raises(headrace.ConfigError, match=message):
            headrace.run(pipeline, "2026-11-01", engine)
    assert not (tmp_path / "out").exists()

    partition = tmp_path / "out" / "ds=2026-11-01"
    partition.mkdir(parents=True)
    pq.write_table(pa.table({"words": [3]}), partition / "part-0.parquet")
    (partition / "_SUCCESS").write_text(json.dumps({"files": [{"path": "part-0.parquet"}]}))
    assert headrace.read(str(tmp_path / "out"), ds=dt.date(2026, 11, 1)).column("ds").to_pylist() == ["2026-11-01"]


def test_columns_of_a_committed_file_on_s3_are_read_without_fetching_the_others(s3_server, monkeypatch):
    """``headrace.read(OUT, columns=[...])`` on a bucket fetched every file whole (one id column
    of a 31 MB embeddings file: 31.5 MB). A large file is now fetched as its footer and the
    chunks of the columns asked for; the rows are the same as from the whole file, whatever
    the columns (a nested one, a dictionary-encoded one, none)."""
    import io
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from conftest import bucket
    from fixtures.flaky_s3_proxy import FlakyS3Proxy
    from headrace import committed

    rng = np.random.default_rng(3)
    n = 3000
    table = pa.table({"doc_id": [f"d{i}" for i in range(n)], "doc_id.v2": [i for i in range(n)],
                      "text": [None if i % 7 == 0 else f"text {i % 5}" for i in range(n)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 64, dtype=np.float32)), 64)})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=1000)
    data = sink.getvalue()
    fs = bucket("s3", "hr-read-columns")
    fs.pipe({"hr-read-columns/out/ds=2026-11-01/part-000.parquet": data,
             "hr-read-columns/out/ds=2026-11-01/_SUCCESS": json.dumps(
                 {"files": [{"path": "part-000.parquet", "rows": n, "bytes": len(data)}]}).encode()})
    monkeypatch.setattr(committed, "COLUMNS_APART", 0, raising=False)  # this small file too
    with FlakyS3Proxy(s3_server["AWS_ENDPOINT_URL"], {}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            for columns in (["doc_id.v2"], ["doc_id"], ["embedding"], ["text", "doc_id"], ["doc_id", "ds"], []):
                before = proxy.bytes_out
                got = headrace.read("s3://hr-read-columns/out", columns=columns)
                fetched = proxy.bytes_out - before
                expected = table.append_column("ds", pa.array(["2026-11-01"] * n)).select(columns)
                assert got.num_rows == n and got.equals(expected), columns
                if "embedding" not in columns:
                    assert fetched < len(data) / 4, (columns, fetched, len(data))  # before: the whole file
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
