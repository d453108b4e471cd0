"""Benchmark: the driver's own cost with many inputs, against hand-written Ray Data.

    python benchmarks/driver_scale.py [--sizes 100000,1000000]

The driver lists the input and keeps, per input, its id (and, from every write task, the
ids and weights of the inputs in its files) for the conservation check and resume. This
measures what that costs with N inputs: the driver's peak resident memory above its
footprint once Ray is up, and the time from the end of processing to the commit.

The source is synthetic, of the same shape as ``Files``: N records of (doc_id, source)
with the ids ``Files`` would give N file URIs, in blocks of ``--per-block`` records
(``Files`` makes blocks of 16; far more blocks than cores only adds Ray's per-task
overhead, which is not what is measured here). One task stage derives a column from the
URI; a Parquet sink writes the rows. Each size runs twice in fresh processes on a local
Ray: headrace, then the same map and write_parquet hand-written in Ray Data (the
baseline: a driver that keeps nothing per input). Appends the numbers to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work", "driver-scale")
sys.path.insert(0, ROOT)

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import psutil  # noqa: E402

from headrace.source import Files, Listing, stable_id  # noqa: E402


@dataclass(frozen=True)
class SyntheticFiles(Files):
    """Files' records (doc_id, source) for ``count`` made-up URIs, without files on disk."""

    count: int = 0

    def listing(self, exclude: str | None = None) -> Listing:
        uris = [f"{self.url}/doc-{i:08d}.txt" for i in range(self.count)]
        table = pa.table({self.id_column: [stable_id(u) for u in uris], "source": uris}, schema=self.schema)
        return Listing(table, pa.nulls(self.count, pa.int64()))


def uri_length(table: pa.Table) -> pa.Table:
    return table.append_column("length", pc.utf8_length(table.column("source")).cast(pa.int32()))


class _Peak:
    """Samples this process's resident memory every 20 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak - self.base


def child(kind: str, count: int, per_block: int) -> dict:
    import ray

    from headrace import EngineConf, ParquetSink, Pipeline, Stage, run

    class UriLength(Stage):
        needs = ("source",)
        adds = {"length": pa.int32()}
        batch_size = 4096

        def process(self, batch):
            return uri_length(batch)

    output = os.path.join(WORK, f"{kind}-{count}")
    shutil.rmtree(output, ignore_errors=True)
    source = SyntheticFiles("file:///synthetic/", files_per_block=per_block, count=count)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    if kind == "headrace":
        pipeline = Pipeline(name="driver_scale", source=source, stages=[UriLength()],
                            sink=ParquetSink(output, rows_per_file=100_000))
        peak = _Peak()
        manifest = run(pipeline, "2026-11-01", EngineConf(progress=False)).manifest
        extra = peak.stop()
        timings = manifest["timings"]
        total = time.perf_counter() - started
        to_commit = total - timings["list_s"] - timings["start_s"] - timings["process_s"]
        rows = manifest["counts"]["output"]
    else:
        peak = _Peak()
        table = source.list()
        listed = time.perf_counter()
        blocks = [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]
        dataset = ray.data.from_arrow(blocks).map_batches(uri_length, batch_format="pyarrow", batch_size=4096)
        dataset.write_parquet(output, min_rows_per_file=100_000)
        processed = time.perf_counter()
        rows = pq_rows(output)
        extra = peak.stop()
        total = time.perf_counter() - started
        to_commit = None
        timings = {"list_s": listed - started, "process_s": processed - listed}
    ray.shutdown()
    shutil.rmtree(output, ignore_errors=True)
    return {"kind": kind, "inputs": count, "rows": rows, "driver_extra_mib": extra / 2**20, "total_s": total,
            "list_s": timings["list_s"], "process_s": timings["process_s"], "end_to_commit_s": to_commit}


def pq_rows(path: str) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(path, format="parquet").count_rows()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--per-block", type=int, default=1000)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "COUNT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.per_block)))
        return
    os.makedirs(WORK, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    results = []
    for count in (int(s) for s in args.sizes.split(",")):
        for kind in ("headrace", "ray_data"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(count), "--per-block",
                                  str(args.per_block)], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"{kind} {count} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(json.dumps(result))
    write_results(results, args)


def write_results(results: list[dict], args) -> None:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "",
        f"## Driver cost with many inputs ({dt.date.today().isoformat()})",
        "",
        f"`python benchmarks/driver_scale.py --sizes {args.sizes} --per-block {args.per_block}` on {cpu}, "
        f"{os.cpu_count()} cores; a local Ray with 4 CPU slots; synthetic file records, one task stage, Parquet out.",
        "Driver memory is the driver process's peak RSS above its size once Ray was up;",
        "end to commit is from the end of processing to the published partition.",
        "",
        "| inputs | driver | driver extra MiB | list s | process s | end to commit s | total s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        commit = "-" if r["end_to_commit_s"] is None else f"{r['end_to_commit_s']:.2f}"
        lines.append(
            f"| {r['inputs']:,} | {r['kind']} | {r['driver_extra_mib']:.0f} | {r['list_s']:.1f} | "
            f"{r['process_s']:.1f} | {commit} | {r['total_s']:.1f} |"
        )
    with open(os.path.join(HERE, "RESULTS.md"), "a") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
