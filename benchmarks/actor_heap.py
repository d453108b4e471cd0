"""Diagnostic: the resident size of one embedding process over many batches.

    python benchmarks/actor_heap.py [--files 1200] [--trim] [--onednn-cache N]

Chunks and embeds demo documents in one process with one torch thread, as a CPU model
actor does, and prints RSS every 160 files. --trim returns freed heap after each batch
(what headrace's actors do); --onednn-cache sets ONEDNN_PRIMITIVE_CACHE_CAPACITY (run
without it to see oneDNN's default of 1,024). Needs benchmarks/work/corpus-10000 from
benchmarks/memory.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1200)
    parser.add_argument("--trim", action="store_true")
    parser.add_argument("--onednn-cache", type=int)
    args = parser.parse_args()
    if args.onednn_cache is not None:
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(args.onednn_cache)
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")  # the stage would set 8
    import psutil
    import pyarrow as pa

    from headrace import StageContext
    from headrace.memory import release_unused_memory
    from stages.models import EmbedText
    from stages.text import ChunkText

    corpus = os.path.join(HERE, "work", "corpus-10000")
    files = sorted(glob.glob(os.path.join(corpus, "**", "*.*"), recursive=True))[: args.files]
    if not files:
        sys.exit(f"no documents in {corpus}: run benchmarks/memory.py first")
    random.Random(1).shuffle(files)
    chunker, embed = ChunkText(), EmbedText()
    embed.setup(StageContext(threads=1))
    process = psutil.Process()
    started, batches, trim_s = time.perf_counter(), 0, 0.0
    for start in range(0, len(files), 16):
        parts = []
        for path in files[start : start + 16]:
            text = open(path, "rb").read().decode("utf-8", "replace")
            try:
                parts.append(chunker.process(pa.table({"doc_id": [path], "source": [path], "text": [text]})))
            except ValueError:  # the corpus has broken files on purpose
                pass
        chunks = pa.concat_tables(parts)
        for row in range(0, chunks.num_rows, 64):
            embed.process(chunks.slice(row, 64))
            batches += 1
            if args.trim:
                mark = time.perf_counter()
                release_unused_memory()
                trim_s += time.perf_counter() - mark
        if (start // 16) % 10 == 0:
            print(f"{start:5d} files {batches:5d} batches  RSS {process.memory_info().rss / 2**20:6.0f} MiB"
                  f"  {time.perf_counter() - started:6.1f} s", flush=True)
    print(f"end: RSS {process.memory_info().rss / 2**20:.0f} MiB, {time.perf_counter() - started:.1f} s"
          + (f", {1000 * trim_s / batches:.1f} ms per trim" if args.trim else ""))


if __name__ == "__main__":
    main()
