"""Benchmark: a table job over many small Parquet row groups, one split per Ray task
against small splits packed into tasks, and against a bare pyarrow copy.

    python benchmarks/table_tasks.py [--rows 1000000] [--group-rows 500] [--no-record]

The job reads one Parquet file (a string id, a text, an int64 and a float64 column; the
file of benchmarks/read_table.py) with ReadTable and writes the rows as Parquet: no
model, so what it measures is the engine's cost per split. Whole processes, start-up
included, default settings:

- bare: one Python process reads the file with pyarrow and writes it again;
- headrace, ``Tables(..., files_per_block=1)``: one split per Ray task (before packing);
- headrace, defaults: small splits share a task, up to 64 and ``split_bytes`` of them.

Appends the numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
sys.path[:0] = [ROOT, HERE]

PIPELINE = '''"""Copy the rows of table files (benchmarks/table_tasks.py)."""
import pyarrow as pa

from headrace import Pipeline, output_sink
from headrace.tables import Tables
from stages.tables import ReadTable


def pipeline(input: str, output: str, splits_per_task: int = 0):
    source = Tables(input, files_per_block=splits_per_task) if splits_per_task else Tables(input)
    read = ReadTable({"text": pa.string(), "n": pa.int64(), "score": pa.float64()}, id_column="id",
                     required=("text",))
    return Pipeline(name="table_copy", source=source, stages=[read],
                    sink=output_sink(output, rows_per_file=200_000),
                    columns=["record_id", "source", "text", "n", "score"])
'''

BARE = '''
import sys, pyarrow.parquet as pq
pq.write_table(pq.read_table(sys.argv[1], columns=["id", "text", "n", "score"]), sys.argv[2])
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--group-rows", type=int, default=500)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    from doc_embeddings import machine, publish, timed
    from read_table import write_file

    data = os.path.join(WORK, f"read-table-{args.rows}-{args.group_rows}.parquet")
    write_file(data, args.rows, args.group_rows)
    pipeline = os.path.join(WORK, "table_copy_pipeline.py")
    with open(pipeline, "w") as handle:
        handle.write(PIPELINE)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ROOT}
    runs = {
        "bare pyarrow: read the file, write it (one process)": [sys.executable, "-c", BARE, data,
                                                                 os.path.join(WORK, "table-copy-bare.parquet")],
        "headrace, one split per task (files_per_block=1)": ["--conf", "splits_per_task=1"],
        "headrace, defaults (small splits packed into tasks)": [],
    }
    rows = []
    for name, extra in runs.items():
        output = os.path.join(WORK, "table-copy-out")
        shutil.rmtree(output, ignore_errors=True)
        report = os.path.join(WORK, "table-copy-report.json")
        command = extra if name.startswith("bare") else [
            sys.executable, "-m", "headrace.cli", "submit", pipeline, "--ds", "2026-01-01", "--conf", f"input={data}",
            "--conf", f"output={output}", "--conf", "headrace.progress=false", "--report", report, *extra]
        wall, _ = timed(command, env)
        process = "-"
        if not name.startswith("bare"):
            with open(report) as handle:
                manifest = json.load(handle)
            assert manifest["counts"]["output"] == args.rows, manifest["counts"]
            process = f"{manifest['timings']['process_s']:.1f}"
        rows.append((name, wall, process))
        print(f"{name}: {wall:.1f} s (processing {process} s)", flush=True)
    base = rows[1][1]
    lines = [
        f"### A table job over {args.rows:,} rows in row groups of {args.group_rows:,}: tasks per split — "
        f"{dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/table_tasks.py --rows {args.rows} "
        f"--group-rows {args.group_rows}`. ReadTable to Parquet, no model; whole processes, start-up included.",
        "",
        "| run | wall s | processing s | vs one split per task |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {wall:.1f} | {process} | {base / wall:.2f}x |" for name, wall, process in rows),
    ]
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
