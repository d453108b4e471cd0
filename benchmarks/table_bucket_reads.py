"""Benchmark: the bytes fetched from S3 to read table files, against the files' own size
and against the same reads by an earlier revision of headrace.

    python benchmarks/table_bucket_reads.py [--mb 96] [--latency-ms 20] [--baseline-rev REV] [--no-record]

A table job cuts a text file into byte ranges (`split_bytes`, 32 MiB by default) and a
Parquet file into its row groups; each split is read by its own task, which opens the
file on the store. This puts a JSON Lines file, a CSV file and a Parquet file (the same
rows and eight float columns no reader asks for, in row groups of an eighth of the rows)
of about --mb MB each in a bucket of a local S3 server (moto), reached
through a proxy that delays every answer by --latency-ms and counts the requests and the
bytes of its answers, and reads every split of each with ``ReadTable`` in a fresh Python
process, with this checkout's code and, with --baseline-rev, with that revision's
``headrace`` and ``stages`` packages (from ``git archive``). On a real store the bytes are
what a read costs in time (a connection carries about 100 MB/s) and, across regions, in
money. Appends the numbers to benchmarks/RESULTS.md.
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
import pyarrow as pa
from headrace.tables import Tables
from stages.tables import ReadTable
splits = Tables(sys.argv[2]).list()
read = ReadTable({"text": pa.string(), "n": pa.int64()}, id_column="id")
print("ready", flush=True); sys.stdin.readline()
started = time.perf_counter()
rows = sum(read.process(splits.slice(i, 1)).num_rows for i in range(splits.num_rows))
print(json.dumps({"splits": splits.num_rows, "rows": rows, "wall": time.perf_counter() - started}))
"""


def files(megabytes: int) -> dict[str, bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import numpy as np

    rng = np.random.default_rng(7)
    words = "river weir sluice gate flow mill race head tail pond".split()
    texts, size, i = [], 0, 0
    while size < megabytes * 1_000_000:
        text = " ".join(words[j] for j in rng.integers(0, len(words), 30 + i % 40))
        texts.append(text)
        size += len(text) + 30
        i += 1
    ids = [f"r{i}" for i in range(len(texts))]
    jsonl = "".join(json.dumps({"id": r, "text": t, "n": k}) + "\n" for k, (r, t) in enumerate(zip(ids, texts)))
    csv = "id,text,n\n" + "".join(f'{r},"{t}",{k}\n' for k, (r, t) in enumerate(zip(ids, texts)))
    sink = io.BytesIO()
    # A wide table, as exports are: eight float columns the reader does not ask for.
    floats = {f"score_{c}": rng.random(len(texts)) for c in range(8)}
    table = pa.table({"id": ids, "text": texts, "n": list(range(len(texts))), **floats})
    pq.write_table(table, sink, row_group_size=max(1, -(-len(texts) // 8)))
    return {"lines.jsonl": jsonl.encode(), "table.csv": csv.encode(), "shard.parquet": sink.getvalue()}


def measure(code_root: str, url: str, env: dict, proxy: FlakyS3Proxy) -> dict:
    before: list[int] = []
    got = in_steps([sys.executable, "-c", MEASURE, code_root, url], env, code_root, ("ready",),
                   lambda: before.extend((sum(proxy.counts.values()), proxy.bytes_out)), f"reading {url} with {code_root}")
    got["requests"] = sum(proxy.counts.values()) - before[0]
    got["bytes"] = proxy.bytes_out - before[1]
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=96, help="size of each file in MB")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    add_baseline_argument(parser)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    rows = []
    with moto_bucket("bench-tables", args.baseline_rev, ("headrace", "stages")) as (env, fs, codes):  # the readers live in stages
        made = files(args.mb)
        fs.pipe({f"bench-tables/{name}": data for name, data in made.items()})
        with FlakyS3Proxy(env["AWS_ENDPOINT_URL"], {}, latency_s=args.latency_ms / 1000) as proxy:
            proxied = {**env, "AWS_ENDPOINT_URL": proxy.url}
            for name, data in made.items():
                for code, code_root in codes.items():
                    got = measure(code_root, f"s3://bench-tables/{name}", proxied, proxy)
                    rows.append((name, len(data), code, got))
                    print(name, code, got, flush=True)
    counts = {name: {got["rows"] for n, _, _, got in rows if n == name} for name in made}
    assert all(len(found) == 1 for found in counts.values()), counts  # every code reads the same rows
    command = command_line("table_bucket_reads.py", parser, args)
    lines = [
        f"### Reading table files from S3 (moto behind a {args.latency_ms:g} ms proxy): bytes fetched — "
        f"{dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{command}`. Every split of each file read by ReadTable in a fresh "
        "process (default split_bytes, 32 MiB; Parquet: the text plus eight float columns not read, row groups of an eighth of the rows); requests and the bytes of "
        "the answers counted at the proxy.",
        "",
        "| file | MB | code | splits | rows | wall s | requests | MB fetched | fetched / size |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, code, got in rows:
        lines.append(f"| {name} | {size / 1e6:.1f} | {code} | {got['splits']} | {got['rows']:,} | {got['wall']:.2f} | "
                     f"{got['requests']:,} | {got['bytes'] / 1e6:,.1f} | {got['bytes'] / size:.2f}x |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
