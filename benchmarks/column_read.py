"""Benchmark: reading one column of a committed output on S3, against the same read by an
earlier revision of headrace.

    python benchmarks/column_read.py [--files 4] [--rows 20000] [--latency-ms 20] [--baseline-rev REV] [--no-record]

A doc-embeddings file of 20,000 rows is about 31 MB, nearly all of it the 384-float
embeddings; reading its ids (``headrace.read(OUT, columns=["doc_id"])``: which documents
were embedded) should not fetch them. This commits --files such files (with their
manifest, as a run writes them) to a bucket of a local S3 server (moto) behind a proxy that
delays every answer by --latency-ms and counts the requests and bytes of its answers, and
reads every column (after one untimed read of them: a process's first large transfer is
slower), then one column, in fresh processes, with this checkout's code and,
with --baseline-rev, with that revision's ``headrace`` package (from ``git archive``).
Appends the numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from doc_embeddings import machine, publish  # noqa: E402
from fixtures.flaky_s3_proxy import FlakyS3Proxy  # noqa: E402
from object_store import in_steps, moto_bucket  # noqa: E402
from revisions import add_baseline_argument, command_line  # noqa: E402

MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import headrace
headrace.read(sys.argv[2])  # once untimed: a process's first large transfer pays for its warming up
started = time.perf_counter()
headrace.read(sys.argv[2])
every = time.perf_counter() - started
print("ready", flush=True); sys.stdin.readline()
started = time.perf_counter()
rows = headrace.read(sys.argv[2], columns=["doc_id"]).num_rows
one = time.perf_counter() - started
print("one", flush=True); sys.stdin.readline()
print(json.dumps({"rows": rows, "one_s": one, "all_s": every}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20_000, help="rows a file")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    add_baseline_argument(parser)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with moto_bucket("bench-columns", args.baseline_rev) as (env, fs, codes):
        rng = np.random.default_rng(5)
        objects, manifest, size = {}, [], 0
        for index in range(args.files):
            n = args.rows
            table = pa.table({"doc_id": [f"{index}-{i:016x}" for i in range(n)],
                              "text": [f"chunk {i} of a document about weirs and races" for i in range(n)],
                              "embedding": pa.FixedSizeListArray.from_arrays(
                                  pa.array(rng.random(n * 384, dtype=np.float32)), 384)})
            sink = io.BytesIO()
            pq.write_table(table, sink)
            name = f"part-000-{index:05d}.parquet"
            objects[f"bench-columns/out/ds=2026-11-01/{name}"] = sink.getvalue()
            manifest.append({"path": name, "rows": n, "bytes": len(sink.getvalue())})
            size += len(sink.getvalue())
        objects["bench-columns/out/ds=2026-11-01/_SUCCESS"] = json.dumps({"files": manifest}).encode()
        fs.pipe(objects)
        with FlakyS3Proxy(env["AWS_ENDPOINT_URL"], {}, latency_s=args.latency_ms / 1000) as proxy:
            for code, code_root in codes.items():
                marks: list[tuple[int, int]] = []
                got = in_steps([sys.executable, "-c", MEASURE, code_root, "s3://bench-columns/out"],
                               {**env, "AWS_ENDPOINT_URL": proxy.url}, code_root, ("ready", "one"),
                               lambda: marks.append((sum(proxy.counts.values()), proxy.bytes_out)),
                               f"reading with {code_root}")
                assert got["rows"] == args.files * args.rows, got
                got["one_requests"] = marks[1][0] - marks[0][0]
                got["one_bytes"] = marks[1][1] - marks[0][1]
                rows.append((code, got))
                print(code, got, flush=True)
    command = command_line("column_read.py", parser, args)
    lines = [
        f"### Reading one column of a committed output on S3 (moto behind a {args.latency_ms:g} ms proxy) — "
        f"{dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{command}`. {args.files} files of {args.rows:,} rows (doc_id, text, "
        f"384-float embedding; {size / 1e6:.1f} MB in all); fresh processes; requests and bytes counted at the proxy.",
        "",
        "| code | `read(columns=[\"doc_id\"])` s | its requests | its MB fetched | `read()` of every column s |",
        "|---|---:|---:|---:|---:|",
    ]
    for code, got in rows:
        lines.append(f"| {code} | {got['one_s']:.2f} | {got['one_requests']:,} | {got['one_bytes'] / 1e6:.1f} | "
                     f"{got['all_s']:.2f} |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
