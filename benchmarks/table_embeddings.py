"""Benchmark: table_embeddings on a Parquet shard against doc_embeddings on the same texts
as files.

    python benchmarks/table_embeddings.py [--docs 1000] [--no-record]

The visible texts of the doc-embeddings benchmark's corpus (benchmarks/work/corpus-1000)
are written three times: as one .txt file each, as the rows of one Parquet file in row
groups of 64 rows, and as one Parquet file of a single row group (one split: what
pyarrow and Spark write for a file of this size). The jobs chunk and embed exactly these
texts with their defaults; whole processes, start-up included. Appends records/s to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")


def texts(docs: int) -> list[str]:
    from baselines import list_files, to_text

    corpus = os.path.join(WORK, f"corpus-{docs}")
    if not os.path.isdir(corpus):
        from pipelines.demo_data import write_documents

        write_documents(corpus, count=docs, seed=2026)
    out = []
    for path in list_files(corpus):
        with open(path, "rb") as handle:
            text = to_text(path, handle.read())
        if text is not None and text.strip():
            out.append(text)
    return out


def timed(args: list[str]) -> float:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sys.path[:0] = [ROOT, HERE]
    import pyarrow as pa
    import pyarrow.parquet as pq

    from doc_embeddings import machine, publish

    records = texts(args.docs)
    files, shard = os.path.join(WORK, "texts-as-files"), os.path.join(WORK, "texts-as-table")
    whole = os.path.join(WORK, "texts-as-one-row-group")
    for folder in (files, shard, whole):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    for index, text in enumerate(records):
        with open(os.path.join(files, f"t{index:05d}.txt"), "w", encoding="utf-8") as handle:
            handle.write(text)
    table = pa.table({"id": [f"t{i:05d}" for i in range(len(records))], "text": records})
    pq.write_table(table, os.path.join(shard, "texts.parquet"), row_group_size=64)
    pq.write_table(table, os.path.join(whole, "texts.parquet"), row_group_size=len(records))
    cli = [sys.executable, "-m", "headrace.cli", "submit"]
    common = ["--ds", "2026-01-01", "--conf", "headrace.progress=false"]
    seconds = {}
    for name, pipeline, source in (("doc_embeddings on .txt files", "pipelines/doc_embeddings.py", files),
                                   ("table_embeddings on one Parquet file", "pipelines/table_embeddings.py", shard),
                                   ("table_embeddings on one Parquet file of one row group",
                                    "pipelines/table_embeddings.py", whole)):
        output = os.path.join(WORK, "out-" + pipeline.split("/")[1][:-3])
        shutil.rmtree(output, ignore_errors=True)
        seconds[name] = timed([*cli, pipeline, *common, "--conf", f"input={source}", "--conf", f"output={output}"])
        print(f"{name}: {seconds[name]:.1f} s", flush=True)
    base = next(iter(seconds.values()))
    lines = [
        f"### table_embeddings against doc_embeddings on the same texts — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/table_embeddings.py --docs {args.docs}`. "
        f"{len(records)} texts (the demo corpus's visible text), as .txt files, as one Parquet file in row "
        "groups of 64 and as one Parquet file of one row group; whole processes, start-up included; "
        "default settings.",
        "",
        "| run | wall s | records/s | vs doc_embeddings |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {s:.1f} | {len(records) / s:.1f} | {base / s:.2f}x |" for name, s in seconds.items()],
    ]
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
