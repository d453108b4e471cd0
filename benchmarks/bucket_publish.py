"""Benchmark: a run that publishes many files to S3, and its rerun, against the same by an
earlier revision of headrace.

    python benchmarks/bucket_publish.py [--files 400] [--latency-ms 20] [--baseline-rev REV] [--no-record]

On an object store a run publishes by copying each staged file to its published name
(server-side), writing `_SUCCESS`, then deleting what the manifest does not list (on a
rerun, the previous run's files); a resumed run first reads every progress file. A large
run has thousands of files (100 M rows at the default 20,000 rows a file: 5,000). This
runs a word count over --files small local files with one row per output file (so as
many files as a large run, without its data) into a bucket of a local S3 server (moto)
reached through a proxy that delays every answer by --latency-ms, as a real store's round
trip takes; then the same date again (a rerun: the copies and the deletion of the first
run's files). Whole processes, with this checkout's code and, with --baseline-rev, that
revision's ``headrace`` package (``git archive``); the proxy counts the requests.
Appends the numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from doc_embeddings import machine, publish  # noqa: E402
from fixtures.flaky_s3_proxy import FlakyS3Proxy  # noqa: E402
from object_store import moto_environment, start_moto  # noqa: E402
from revisions import add_baseline_argument, code_roots, command_line  # noqa: E402

PIPELINE = '''
import pyarrow as pa
from headrace import Files, ParquetSink, Pipeline, Stage
from stages.files import ReadFiles
from stages.text import DecodeText


class Words(Stage):
    needs = ("text",)
    adds = {"words": pa.int32()}
    batch_size = 1  # one row a block, and so one file a block (rows_per_file=1)

    def process(self, batch):
        return batch.append_column("words", pa.array([len(t.split()) for t in batch.column("text").to_pylist()], pa.int32()))


def pipeline(input: str = "", output: str = "") -> Pipeline:
    return Pipeline(name="publish_bench", source=Files(input, extensions=(".txt",), files_per_block=1),
                    stages=[ReadFiles().with_(batch_size=1), DecodeText().with_(batch_size=1), Words()],
                    sink=ParquetSink(output, rows_per_file=1), columns=["doc_id", "source", "words"])
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    add_baseline_argument(parser)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import fsspec

    scratch = tempfile.mkdtemp(prefix="headrace-bucket-publish-")
    server, endpoint = start_moto()
    env = {**os.environ, **moto_environment(endpoint), "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    rows = []
    try:
        codes = code_roots(args.baseline_rev, scratch)
        docs = os.path.join(scratch, "docs")
        os.makedirs(docs)
        for index in range(args.files):
            with open(os.path.join(docs, f"doc-{index:05d}.txt"), "w") as handle:
                handle.write("word " * (index % 7 + 1))
        pipeline = os.path.join(scratch, "publish_bench.py")
        with open(pipeline, "w") as handle:
            handle.write(PIPELINE)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench-publish")
        with FlakyS3Proxy(endpoint, {}, latency_s=args.latency_ms / 1000) as proxy:
            for number, (code, code_root) in enumerate(codes.items()):
                output = f"s3://bench-publish/out-{number}"
                walls = []
                before = sum(proxy.counts.values())
                for _ in ("run", "rerun"):
                    command = [sys.executable, "-m", "headrace.cli", "submit", pipeline, "--ds", "2026-11-28",
                               "--conf", f"input={docs}", "--conf", f"output={output}", "--conf", "headrace.progress=false"]
                    started = time.perf_counter()
                    done = subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                                          env={**env, "AWS_ENDPOINT_URL": proxy.url,
                                               "PYTHONPATH": os.pathsep.join([code_root, ROOT])})
                    walls.append(time.perf_counter() - started)
                    if done.returncode != 0:
                        sys.exit(f"{code} failed ({done.returncode}):\n{done.stderr[-3000:]}")
                published = [p for p in fs.find(f"bench-publish/out-{number}/ds=2026-11-28") if p.endswith(".parquet")]
                assert len(published) == args.files, len(published)
                rows.append((code, walls, sum(proxy.counts.values()) - before))
                print(code, walls, flush=True)
    finally:
        server.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
    command = command_line("bucket_publish.py", parser, args)
    lines = [
        f"### Publishing {args.files:,} files to S3 (moto behind a {args.latency_ms:g} ms proxy) — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{command}`. A word count over {args.files:,} local files, one row per "
        "output file; whole processes (Ray's start included); requests counted at the proxy over both runs.",
        "",
        "| code | run s | rerun s | requests |",
        "|---|---:|---:|---:|",
    ]
    for code, walls, requests in rows:
        lines.append(f"| {code} | {walls[0]:.1f} | {walls[1]:.1f} | {requests:,} |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
