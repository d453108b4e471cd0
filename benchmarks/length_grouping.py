"""Micro-benchmark: what length-aware batching gains in the embedding stage.

    python benchmarks/length_grouping.py [--rows 1024]

EmbedText alone (one process, all cores, no Ray) over the same token ids twice: rows in
arrival order padded per micro-batch, and rows grouped by length. Two length mixes:
real chunks of the demo corpus (mostly full 256-token chunks) and short records
(lengths spread between 8 and 256 tokens, as in titles, captions, reviews).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pyarrow as pa


def ids_table(lengths: np.ndarray, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [[101, *rng.integers(1000, 20000, int(n) - 2).tolist(), 102] for n in lengths]
    return pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32()))})


def timed(stage, table: pa.Table, batch: int) -> float:
    started = time.perf_counter()
    for offset in range(0, table.num_rows, batch):
        stage.process(table.slice(offset, batch))
    return time.perf_counter() - started


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from stages.models import EmbedText

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64, help="rows per stage batch (the pipeline's default)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    mixes = {
        "demo corpus (73% full chunks)": np.where(rng.random(args.rows) < 0.73, 256, rng.integers(8, 256, args.rows)),
        "short records (8..256 tokens)": np.minimum(256, np.maximum(8, rng.lognormal(3.8, 0.8, args.rows).astype(int))),
    }
    print(f"{'mix':<32} {'precision':<9} {'plain s':>8} {'grouped s':>9} {'gain':>6}")
    for precision in ("fp32", "bf16"):
        plain = EmbedText(precision=precision).with_(length_grouping=False, threads=os.cpu_count() or 1)
        grouped = EmbedText(precision=precision).with_(threads=os.cpu_count() or 1)
        plain.setup()
        grouped.setup()
        for name, lengths in mixes.items():
            table = ids_table(lengths)
            timed(grouped, table.slice(0, args.batch), args.batch)  # warm-up
            t_plain = timed(plain, table, args.batch)
            t_grouped = timed(grouped, table, args.batch)
            print(f"{name:<32} {precision:<9} {t_plain:8.1f} {t_grouped:9.1f} {t_plain / t_grouped:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
