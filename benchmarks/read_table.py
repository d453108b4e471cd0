"""Benchmark: the ReadTable stage against a bare pyarrow read of the same Parquet row groups.

    python benchmarks/read_table.py [--rows 1000000] [--repeat 3] [--no-record]

A table job without a model is bound by how fast ReadTable turns splits into rows. Two
generated Parquet files of ``--rows`` rows (a string id, a text of 20 to 400 characters,
an int64 and a float64 column), one in row groups of 65,536 rows and one in row groups
of 500 (many small splits, as a writer that flushes often makes them). For each, in this
process, one core:

- bare: ``pq.ParquetFile(path).read_row_group(g, columns=...)`` for every row group, the
  file opened once: the least any reader can do;
- ReadTable: ``process`` on every split that ``Tables`` lists, one split per call as in a
  run (a split is one task), with the declared types checked, ``text`` required and the
  ``id`` column as record id, or (``text`` only) as table_embeddings reads it.

Prints rows/s and the ratio, and appends them to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
sys.path[:0] = [ROOT, HERE]


def write_file(path: str, rows: int, group_rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(path):
        return
    rng = np.random.default_rng(2026)
    words = np.array("the of and a to in is you that it he was for on are as with his they at be this from".split())
    lengths = rng.integers(4, 80, rows)
    flat = words[rng.integers(0, len(words), int(lengths.sum()))].tolist()
    texts, at = [], 0
    for n in lengths.tolist():
        texts.append(" ".join(flat[at:at + n]))
        at += n
    table = pa.table({
        "id": pa.array([f"doc-{i:09d}" for i in range(rows)]),
        "text": pa.array(texts),
        "n": pa.array(rng.integers(0, 1 << 40, rows)),
        "score": pa.array(rng.random(rows)),
    })
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path + ".tmp", row_group_size=group_rows)
    os.replace(path + ".tmp", path)


def bare(path: str, columns: list[str]) -> tuple[float, int]:
    import pyarrow.parquet as pq

    started = time.perf_counter()
    reader = pq.ParquetFile(path)
    rows = sum(reader.read_row_group(g, columns=columns).num_rows for g in range(reader.num_row_groups))
    return time.perf_counter() - started, rows


def stage(path: str, typed: bool) -> tuple[float, int]:
    import pyarrow as pa

    from headrace.envelope import ROW_ERROR
    from headrace.tables import Tables
    from stages.tables import ReadTable

    splits = Tables(path).list()
    if typed:
        read = ReadTable({"text": pa.string(), "n": pa.int64(), "score": pa.float64()}, id_column="id",
                         required=("text",))
    else:
        read = ReadTable({"text": pa.string()}, required=("text",))
    started = time.perf_counter()
    rows = 0
    for i in range(splits.num_rows):
        out = read.process(splits.slice(i, 1))
        rows += out.num_rows
        assert out.column(ROW_ERROR).null_count == out.num_rows, "the generated file has no bad rows"
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyarrow as pa

    from doc_embeddings import machine, publish

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    lines = [
        f"### ReadTable against a bare pyarrow read, Parquet — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/read_table.py --rows {args.rows} --repeat {args.repeat}` "
        f"(best of {args.repeat}; one process, Arrow on one thread).",
        "",
        "| file | read | rows/s | vs bare |",
        "|---|---|---:|---:|",
    ]
    for group_rows in (65_536, 500):
        path = os.path.join(WORK, f"read-table-{args.rows}-{group_rows}.parquet")
        write_file(path, args.rows, group_rows)
        label = f"{args.rows:,} rows, row groups of {group_rows:,}"
        runs = {
            "bare `read_row_group`, id, text, n, score": lambda: bare(path, ["id", "text", "n", "score"]),
            "ReadTable, id, text, n, score (typed, id column)": lambda: stage(path, typed=True),
            "bare `read_row_group`, text": lambda: bare(path, ["text"]),
            "ReadTable, text (as table_embeddings)": lambda: stage(path, typed=False),
        }
        base = None
        for name, run in runs.items():
            best, rows = min(run() for _ in range(args.repeat))
            assert rows == args.rows, (name, rows)
            if name.startswith("bare"):
                base = best
            lines.append(f"| {label} | {name} | {rows / best:,.0f} | {base / best:.2f}x |")
            print(lines[-1], flush=True)
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
