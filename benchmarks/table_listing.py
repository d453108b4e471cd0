"""Benchmark: listing table splits on an S3 store: Parquet footers read one at a time
against several at once.

    python benchmarks/table_listing.py [--files 300] [--latency-ms 20] [--no-record]

``Tables(url).list()`` reads the footer of every Parquet file under ``url`` to cut it
into row-group splits, before any work starts. --files small Parquet files (4 row groups
each) are put in a bucket of a local S3 server (moto) and listed through a proxy that
delays every answer by --latency-ms, as a real store's first byte takes (tens of ms; the
local server alone answers in about 1 ms, which would hide the cost). The same listing
with ``footer_threads=1`` (one footer after another, as before) and with the default.
Appends the numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from doc_embeddings import machine, publish  # noqa: E402
from fixtures.flaky_s3_proxy import FlakyS3Proxy  # noqa: E402
from object_store import moto_environment, start_moto  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from headrace.tables import Tables

    server, endpoint = start_moto()
    os.environ.update(moto_environment(endpoint))
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench-tables")
        for index in range(args.files):
            sink = io.BytesIO()
            pq.write_table(pa.table({"id": [f"{index}-{i}" for i in range(400)], "text": ["x" * 40] * 400}), sink,
                           row_group_size=100)
            fs.pipe_file(f"bench-tables/shards/part-{index:05d}.parquet", sink.getvalue())
        results = {}
        with FlakyS3Proxy(endpoint, {}, latency_s=args.latency_ms / 1000) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            for threads in (1, Tables.footer_threads):
                type(fs).clear_instance_cache()
                before = sum(proxy.counts.values())
                started = time.perf_counter()
                splits = Tables("s3://bench-tables/shards/", footer_threads=threads).list()
                results[threads] = (time.perf_counter() - started, sum(proxy.counts.values()) - before, splits)
                print(f"footer_threads={threads}: {results[threads][0]:.2f} s, {results[threads][1]} requests",
                      flush=True)
    finally:
        server.terminate()
    one, many = results[1], results[Tables.footer_threads]
    assert one[2].equals(many[2]) and one[2].num_rows == 4 * args.files
    lines = [
        f"### Listing Parquet splits on S3 (moto behind a {args.latency_ms:g} ms proxy): footers one at a time "
        f"or at once — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/table_listing.py --files {args.files} "
        f"--latency-ms {args.latency_ms:g}`. {args.files} Parquet files of 4 row groups ({4 * args.files} splits).",
        "",
        "| listing | seconds | requests | files/s | vs one at a time |",
        "|---|---:|---:|---:|---:|",
        f"| footer_threads=1 (one footer after another) | {one[0]:.2f} | {one[1]} | {args.files / one[0]:.0f} | 1.00x |",
        f"| footer_threads={Tables.footer_threads} (default) | {many[0]:.2f} | {many[1]} | {args.files / many[0]:.0f} | "
        f"{one[0] / many[0]:.2f}x |",
    ]
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
