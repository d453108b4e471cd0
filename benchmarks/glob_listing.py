"""Benchmark: listing a glob input on S3, against the same listing by an earlier revision
of headrace.

    python benchmarks/glob_listing.py [--segments 100] [--files 25] [--latency-ms 20] [--baseline-rev REV] [--no-record]

Web crawls and exports are read by glob (`s3://b/crawl/*/warc/*.gz`). This puts a layout
like Common Crawl's in a bucket of a local S3 server (moto): --segments folders, each with
`warc/`, `wet/`, `wat/` and `robotstxt/` folders of --files objects, reached through a
proxy that delays every answer by --latency-ms (the local server alone answers in about
1 ms, which would hide round trips) and counts the requests. Three globs: one part with
glob characters above a literal folder (`crawl/*/warc/*.gz`), one whose glob part has a
literal stem (`crawl/seg-00*/warc/*.gz`), and `**` (`crawl/**/*.gz`, every object). Each
is listed (``Files.listing``) in a fresh Python process with this checkout's code and, with
--baseline-rev, with that revision's ``headrace`` package (from ``git archive``): the wall
time and requests of one listing, and the peak of Python's allocations during a second one
(tracemalloc, which slows allocation, is off for the timed one). Appends the numbers to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from doc_embeddings import machine, publish  # noqa: E402
from fixtures.flaky_s3_proxy import FlakyS3Proxy  # noqa: E402
from object_store import in_steps, moto_bucket  # noqa: E402
from revisions import add_baseline_argument, command_line  # noqa: E402

KINDS = ("warc", "wet", "wat", "robotstxt")

# Lists a tiny glob first (imports, the client), then says so and waits, so that the parent
# counts the requests of the timed listing alone; then the listing again under tracemalloc.
MEASURE = r"""
import gc, json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from headrace.source import Files
Files(sys.argv[3]).listing()
print("ready", flush=True); sys.stdin.readline()
started = time.perf_counter()
rows = Files(sys.argv[2]).listing().records.num_rows
wall = time.perf_counter() - started
print("listed", flush=True); sys.stdin.readline()
gc.collect()
tracemalloc.start()
listing = Files(sys.argv[2]).listing()
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"rows": rows, "wall": wall, "peak": peak}))
"""


def measure(code_root: str, url: str, warm: str, env: dict, proxy: FlakyS3Proxy) -> dict:
    counts: list[int] = []
    got = in_steps([sys.executable, "-c", MEASURE, code_root, url, warm], env, code_root, ("ready", "listed"),
                   lambda: counts.append(sum(proxy.counts.values())), f"listing {url} with {code_root}")
    got["requests"] = counts[1] - counts[0]
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--files", type=int, default=25, help="objects in each of a segment's four folders")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    add_baseline_argument(parser)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    rows = []
    with moto_bucket("bench-glob", args.baseline_rev) as (env, fs, codes):
        names = [f"bench-glob/crawl/seg-{s:03d}/{kind}/f-{f:05d}.gz"
                 for s in range(args.segments) for kind in KINDS for f in range(args.files)]
        names += [f"bench-glob/warm/w-{i}.gz" for i in range(3)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: fs.pipe_file(name, b"x"), names))
        stem = min(10, args.segments)
        globs = [("crawl/*/warc/*.gz", args.segments * args.files),
                 ("crawl/seg-00*/warc/*.gz", stem * args.files),
                 ("crawl/**/*.gz", args.segments * args.files * len(KINDS))]
        with FlakyS3Proxy(env["AWS_ENDPOINT_URL"], {}, latency_s=args.latency_ms / 1000) as proxy:
            proxied = {**env, "AWS_ENDPOINT_URL": proxy.url}
            for glob, expected in globs:
                for code, code_root in codes.items():
                    got = measure(code_root, f"s3://bench-glob/{glob}", "s3://bench-glob/warm/*.gz", proxied, proxy)
                    assert got["rows"] == expected, (glob, code, got)
                    rows.append((glob, expected, code, got))
                    print(glob, code, got, flush=True)
    command = command_line("glob_listing.py", parser, args)
    total = args.segments * args.files * len(KINDS)
    lines = [
        f"### Listing a glob input on S3 (moto behind a {args.latency_ms:g} ms proxy) — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{command}`. {total:,} objects: {args.segments} segment folders of "
        f"`warc/`, `wet/`, `wat/`, `robotstxt/` with {args.files} each; fresh processes; requests of one "
        "listing counted at the proxy; peak of Python's allocations during a second listing.",
        "",
        "| glob | inputs | code | wall s | requests | peak bytes/input |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for glob, expected, code, got in rows:
        lines.append(f"| `{glob}` | {expected:,} | {code} | {got['wall']:.2f} | {got['requests']:,} | "
                     f"{got['peak'] / expected:,.0f} |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
