"""Benchmark: the driver's Python memory for listing an input, on a local disk and on S3,
against the same listing by an earlier revision of headrace.

    python benchmarks/listing_memory.py [--local 300000] [--s3 10000] [--baseline-rev REV] [--no-record]

A run lists its input in the driver before any work starts (``Files.listing``), and
keeps the listing's Arrow table (about 60 bytes an input) for the run. This puts --local
empty files in 300 folders (under /dev/shm where there is one), --s3 objects in a bucket
of a local S3 server (moto) and --gcs in one of the GCS emulator, then lists each in a fresh Python process: wall time, the peak
of Python's allocations during a second listing, and what stays allocated after it (with the
listing's table kept, as a run keeps it: the table itself is Arrow memory, not counted
here). Each is measured with this checkout's code and, with --baseline-rev, with that
revision's ``headrace`` package (from ``git archive``) in the same run. Appends the numbers
to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from doc_embeddings import machine, publish  # noqa: E402
from object_store import moto_environment, start_moto  # noqa: E402
from revisions import add_baseline_argument, code_roots, command_line  # noqa: E402

MEASURE = r"""
import gc, json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
import pyarrow as pa
from headrace.source import Files
source = Files(sys.argv[2], extensions=(".txt",))
Files(sys.argv[3], extensions=(".txt",)).listing()  # imports, clients, first-use state
started = time.perf_counter()
source.listing()  # timed without tracemalloc, which slows Python's allocations down several times
wall = time.perf_counter() - started
gc.collect()
tracemalloc.start()
listing = source.listing()
gc.collect()
held, peak = tracemalloc.get_traced_memory()
print(json.dumps({"rows": listing.records.num_rows, "wall": wall, "peak": peak, "held": held,
                  "table": listing.records.nbytes}))
"""


def measure(code_root: str, url: str, warm_url: str, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, code_root, url, warm_url], env=env,
                            capture_output=True, text=True, cwd=code_root)
    if result.returncode != 0:
        sys.exit(f"listing {url} with {code_root} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class start_gcs_emulator:
    """gcp-storage-emulator in memory on a free local port."""

    def __init__(self) -> None:
        import socket
        import time

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
        self.process = subprocess.Popen([command, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.process.kill()
        sys.exit("gcp-storage-emulator did not start")


def local_tree(root: str, count: int) -> None:
    per = -(-count // 300)
    for index in range(count):
        folder = os.path.join(root, f"d{index // per:03d}")
        if index % per == 0:
            os.makedirs(folder)
        open(os.path.join(folder, f"doc-{index:08d}.txt"), "w").close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local", type=int, default=300_000, help="files on a local disk (0: none)")
    parser.add_argument("--s3", type=int, default=10_000, help="objects on S3 (moto; 0: none)")
    parser.add_argument("--gcs", type=int, default=0, help="objects on GCS (gcp-storage-emulator, about 0.1 s an upload; 0: none)")
    add_baseline_argument(parser)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="headrace-listing-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    env = dict(os.environ)
    rows = []
    server = emulator = None
    try:
        codes = code_roots(args.baseline_rev, scratch)
        stores = []
        if args.local:
            local_tree(os.path.join(scratch, "input"), args.local)
            local_tree(os.path.join(scratch, "warm"), 10)
            stores.append(("local disk", args.local, os.path.join(scratch, "input"), os.path.join(scratch, "warm")))
        if args.s3:
            import fsspec
            from concurrent.futures import ThreadPoolExecutor

            server, endpoint = start_moto()
            env.update(moto_environment(endpoint))
            os.environ.update(env)
            fs = fsspec.filesystem("s3", skip_instance_cache=True)
            fs.mkdir("bench-listing")
            names = [f"bench-listing/input/d{i % 300:03d}/doc-{i:08d}.txt" for i in range(args.s3)]
            names += [f"bench-listing/warm/doc-{i}.txt" for i in range(10)]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda name: fs.pipe_file(name, b""), names))
            stores.append(("S3 (moto)", args.s3, "s3://bench-listing/input", "s3://bench-listing/warm"))
        if args.gcs:
            import fsspec

            emulator = start_gcs_emulator()
            # Uploads through gcsfs's default (extended) filesystem: 30 ms each against the
            # emulator, where the plain one takes a second; the listings as the tests run them.
            os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
            env.update({"STORAGE_EMULATOR_HOST": emulator.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"})
            logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "could not determine bucket type", per upload
            gcs = fsspec.filesystem("gs", skip_instance_cache=True)
            gcs.mkdir("bench-listing")
            gcs.pipe({f"bench-listing/input/d{i % 300:03d}/doc-{i:08d}.txt": b"" for i in range(args.gcs)}
                     | {f"bench-listing/warm/doc-{i}.txt": b"" for i in range(10)})
            stores.append(("GCS (emulator)", args.gcs, "gs://bench-listing/input", "gs://bench-listing/warm"))
        for store, count, url, warm in stores:
            for code, code_root in codes.items():
                got = measure(code_root, url, warm, env)
                assert got["rows"] == count, got
                rows.append((store, count, code, got))
                print(store, code, got, flush=True)
    finally:
        if server is not None:
            server.terminate()
        if emulator is not None:
            emulator.process.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
    command = command_line("listing_memory.py", parser, args)
    lines = [
        f"### Driver memory of an input's listing — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{command}`. Python allocations (tracemalloc) during "
        "`Files.listing` and after it with its table kept; the table itself (Arrow memory) beside them.",
        "",
        "| store | inputs | code | wall s | peak bytes/input | held after, bytes/input | Arrow table bytes/input |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for store, count, code, got in rows:
        lines.append(f"| {store} | {count:,} | {code} | {got['wall']:.2f} | {got['peak'] / count:,.0f} | "
                     f"{got['held'] / count:,.0f} | {got['table'] / count:,.0f} |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
