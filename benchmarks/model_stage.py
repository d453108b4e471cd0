"""Benchmark: the EmbedText stage against the bare model, in headrace's CPU process layout.

    python benchmarks/model_stage.py [--rows 1024] [--mix demo|short|corpus] [--corpus DIR] [--no-record]

Two length mixes: the demo corpus's chunks (benchmarks/work/corpus-1000, the
doc-embeddings benchmark's corpus, 73% full 256-token chunks) in the order the job meets
them, records of every length from 8 to 256 tokens (log-normal), and, with ``--corpus``,
the chunks of a folder of real documents (e.g. the Rust books that rustup installs) in
file order; as 64-row batches dealt alternately to one-thread processes, one per core, started side
by side (how headrace runs CPU model actors). Rows/s counts from model loaded to last
batch done, all processes together. Per precision (fp32, bf16 autocast):

- bare model: plain torch over the same batches, each sorted by length and cut into
  micro-batches of at most 4,096 padded tokens, padded exactly; oneDNN's default cache;
- stage: ``EmbedText.process`` on the same batches as Arrow tables (headrace's default:
  exact lengths, an 8-entry oneDNN cache);
- stage with ``pad_to_buckets``: lengths padded to bucket sizes, a 64-entry cache.

Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
BATCH = 64


def mixed_chunks(rows: int):
    """Records of every length, 8..256 tokens (log-normal, median 45): many shapes."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(7)
    lengths = np.minimum(256, np.maximum(8, rng.lognormal(3.8, 0.8, rows).astype(int)))
    ids = [[101, *rng.integers(1000, 20000, n - 2).tolist(), 102] for n in lengths]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))})


def chunks(mix: str, rows: int, corpus: str | None = None):
    if mix == "short":
        return mixed_chunks(rows)
    return corpus_chunks(rows, corpus if mix == "corpus" else None)


def corpus_chunks(rows: int, corpus: str | None = None):
    """The chunks of ``corpus`` (default: the generated demo corpus), cached as Parquet."""
    import hashlib

    import pyarrow.parquet as pq

    if corpus is None:
        cache = os.path.join(WORK, "chunks-1000.parquet")
    else:
        corpus = os.path.abspath(corpus)
        cache = os.path.join(WORK, f"chunks-{hashlib.sha1(corpus.encode()).hexdigest()[:12]}.parquet")
    if not os.path.exists(cache):
        from baselines import chunk, list_files, to_text

        if corpus is None:
            corpus = os.path.join(WORK, "corpus-1000")
        if not os.path.isdir(corpus):
            from pipelines.demo_data import write_documents

            write_documents(corpus, count=1000, seed=2026)
        paths, texts = [], []
        for path in list_files(corpus):
            with open(path, "rb") as handle:
                text = to_text(path, handle.read())
            if text is not None:
                paths.append(path)
                texts.append(text)
        pq.write_table(chunk(paths, texts).select(["input_ids"]), cache)
    table = pq.read_table(cache)
    return table.slice(0, min(rows, table.num_rows)).combine_chunks()


def bare(batches, precision):
    import numpy as np
    import pyarrow.compute as pc
    import torch

    from baselines import load_model
    from stages.models import length_groups, pad

    model = load_model(1)
    started = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in batches:
            column = batch.column("input_ids")
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            out = np.empty((batch.num_rows, 384), np.float32)
            for rows in length_groups(lengths, 4096):
                ids, mask = pad(column.take(rows))
                attention = torch.from_numpy(mask)
                hidden = model(input_ids=torch.from_numpy(ids), attention_mask=attention).last_hidden_state.float()
                weights = attention.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return time.perf_counter() - started


def stage(batches, precision, buckets=False):
    from headrace import StageContext
    from stages.models import EmbedText

    embed = EmbedText(precision=precision).with_(pad_to_buckets=buckets)
    embed.setup(StageContext(device="cpu", threads=1))
    started = time.perf_counter()
    for batch in batches:
        embed.process(batch)
    return time.perf_counter() - started


def _child(variant, precision, mix, rows, corpus, index, processes, queue):
    os.environ.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)  # each variant's own default
    sys.path[:0] = [ROOT, HERE]
    table = chunks(mix, rows, corpus)
    batches = [table.slice(i, BATCH) for i in range(index * BATCH, table.num_rows, processes * BATCH)]
    count = sum(b.num_rows for b in batches)
    if variant == "bare":
        seconds = bare(batches, precision)
    else:
        seconds = stage(batches, precision, buckets=variant == "stage-buckets")
    queue.put((count, seconds))


def run(variant: str, precision: str, mix: str, rows: int, processes: int, corpus: str | None = None) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_child, args=(variant, precision, mix, rows, corpus, i, processes, queue))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(count for count, _ in results) / max(seconds for _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--mix", choices=["demo", "short", "corpus"], action="append",
                        help="demo: the demo corpus's chunks; short: records of 8..256 tokens; corpus: the chunks "
                             "of --corpus (default: demo and short, and corpus where --corpus is given)")
    parser.add_argument("--corpus", help="a folder of real documents, for --mix corpus")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if "corpus" in (args.mix or []) and not args.corpus:
        parser.error("--mix corpus needs --corpus DIR")
    mixes = args.mix or ["demo", "short", *(["corpus"] if args.corpus else [])]
    command = " ".join([f"--rows {args.rows}", *(f"--mix {m}" for m in args.mix or []),
                        *([f"--corpus {args.corpus}"] if args.corpus else [])])
    sys.path[:0] = [ROOT, HERE]
    from doc_embeddings import machine, publish

    import pyarrow.compute as pc

    processes = os.cpu_count() or 1
    lines = [
        f"### EmbedText stage vs the bare model — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/model_stage.py {command}`. "
        f"{processes} one-thread processes side by side, rows/s from model loaded to last batch.",
        "",
        "| rows | precision | bare model rows/s | stage rows/s | stage / bare | stage, pad_to_buckets rows/s | buckets / bare |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mix in mixes:
        table = chunks(mix, args.rows, args.corpus)
        lengths = pc.list_value_length(table.column("input_ids"))
        full = pc.sum(pc.equal(lengths, 256)).as_py() / table.num_rows
        median = int(pc.approximate_median(lengths).as_py())
        label = {"demo": f"{table.num_rows} demo-corpus chunks ({full:.0%} full)",
                 "short": f"{table.num_rows} records of 8..256 tokens (median {median})",
                 "corpus": f"{table.num_rows} chunks of {args.corpus} ({full:.0%} full, median {median} tokens)"}[mix]
        for precision in ("fp32", "bf16"):
            speeds = {v: run(v, precision, mix, args.rows, processes, args.corpus) for v in ("bare", "stage", "stage-buckets")}
            print(mix, precision, {k: round(v, 1) for k, v in speeds.items()}, flush=True)
            lines.append(f"| {label} | {precision} | {speeds['bare']:.1f} | {speeds['stage']:.1f} | "
                         f"{speeds['stage'] / speeds['bare']:.2f}x | {speeds['stage-buckets']:.1f} | "
                         f"{speeds['stage-buckets'] / speeds['bare']:.2f}x |")
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
