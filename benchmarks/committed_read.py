"""Benchmark: finding an output's committed files over many dates on S3, against the same
by an earlier revision of headrace.

    python benchmarks/committed_read.py [--dates 365] [--latency-ms 20] [--baseline-rev REV] [--no-record]

``headrace.read(OUT)`` and ``headrace.scan(OUT)`` without a date read every committed
date: they find each date's manifest (`ds=D/_SUCCESS`) and the files it lists, before any
row is read. This writes --dates dates, each a manifest and one small Parquet file, to a
bucket of a local S3 server (moto), reached through a proxy that delays every answer by
--latency-ms (a real store's first byte takes tens of ms; the local server alone answers
in about 1 ms, which would hide round trips), then times ``committed_files`` and the
whole ``headrace.read`` in fresh processes, with this checkout's code and, with
--baseline-rev, with that revision's ``headrace`` package (from ``git archive``). The
proxy counts the requests. Appends the numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from doc_embeddings import machine, publish  # noqa: E402
from fixtures.flaky_s3_proxy import FlakyS3Proxy  # noqa: E402
from object_store import moto_bucket  # noqa: E402
from revisions import add_baseline_argument, command_line  # noqa: E402

MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import headrace
from headrace.committed import committed_files
started = time.perf_counter()
files = committed_files(sys.argv[2])[2]
found = time.perf_counter() - started
started = time.perf_counter()
rows = headrace.read(sys.argv[2]).num_rows
print(json.dumps({"files": len(files), "find_s": found, "read_s": time.perf_counter() - started, "rows": rows}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dates", type=int, default=365)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    add_baseline_argument(parser)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with moto_bucket("bench-read", args.baseline_rev) as (env, fs, codes):
        sink = io.BytesIO()
        pq.write_table(pa.table({"record_id": [f"r{i}" for i in range(10)], "n": list(range(10))}), sink)
        first = dt.date(2025, 1, 1)
        objects = {}
        for day in range(args.dates):
            folder = f"bench-read/out/ds={first + dt.timedelta(days=day)}"
            objects[f"{folder}/part-00000.parquet"] = sink.getvalue()
            objects[f"{folder}/_SUCCESS"] = json.dumps(
                {"files": [{"path": "part-00000.parquet", "rows": 10, "bytes": len(sink.getvalue())}]}).encode()
        fs.pipe(objects)
        with FlakyS3Proxy(env["AWS_ENDPOINT_URL"], {}, latency_s=args.latency_ms / 1000) as proxy:
            for code, code_root in codes.items():
                before = sum(proxy.counts.values())
                result = subprocess.run([sys.executable, "-c", MEASURE, code_root, "s3://bench-read/out"],
                                        env={**env, "AWS_ENDPOINT_URL": proxy.url}, capture_output=True, text=True,
                                        cwd=code_root)
                if result.returncode != 0:
                    sys.exit(f"{code} failed:\n{result.stderr[-3000:]}")
                got = json.loads(result.stdout.strip().splitlines()[-1])
                assert got["files"] == args.dates and got["rows"] == 10 * args.dates, got
                got["requests"] = sum(proxy.counts.values()) - before
                rows.append((code, got))
                print(code, got, flush=True)
    command = command_line("committed_read.py", parser, args)
    lines = [
        f"### Reading every committed date of an output on S3 (moto behind a {args.latency_ms:g} ms proxy) — "
        f"{dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{command}`. {args.dates} dates of one manifest and one 10-row Parquet "
        "file each; fresh processes; requests counted at the proxy (both steps, the second reads the files too).",
        "",
        "| code | finding the committed files s | headrace.read s | requests |",
        "|---|---:|---:|---:|",
    ]
    for code, got in rows:
        lines.append(f"| {code} | {got['find_s']:.2f} | {got['read_s']:.2f} | {got['requests']:,} |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
