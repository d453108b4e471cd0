"""Micro-benchmark: all-MiniLM-L6-v2 forward throughput on this machine's CPU.

    python benchmarks/model_speed.py

Rows/s for full 256-token rows in batches of 16: fp32 and bf16 autocast, one and all
torch threads, and two one-thread processes side by side (how headrace runs CPU actors).
Explains where the doc-embeddings benchmark's time goes; prints, records nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

SECONDS = 6.0


def throughput(threads: int, precision: str, batch: int = 16, length: int = 256) -> float:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from stages.text import default_model_path

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(str(default_model_path())).eval()
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        model(input_ids=ids, attention_mask=mask)
        rows, started = 0, time.perf_counter()
        while time.perf_counter() - started < SECONDS:
            model(input_ids=ids, attention_mask=mask)
            rows += batch
    return rows / (time.perf_counter() - started)


def _child(args, queue):
    queue.put(throughput(*args))


def side_by_side(processes: int, precision: str) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_child, args=((1, precision), queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(queue.get() for _ in workers)
    for worker in workers:
        worker.join()
    return total


def main() -> None:
    cores = os.cpu_count() or 1
    for precision in ("fp32", "bf16"):
        print(f"{precision}: 1 thread {throughput(1, precision):6.1f} rows/s", flush=True)
        print(f"{precision}: {cores} threads {throughput(cores, precision):6.1f} rows/s", flush=True)
        print(f"{precision}: {cores} processes x 1 thread {side_by_side(cores, precision):6.1f} rows/s", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
