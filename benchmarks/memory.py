"""Benchmark: peak memory of a whole doc-embeddings run on N and 10N documents.

    python benchmarks/memory.py [--docs 1000]

Runs `headrace submit pipelines/doc_embeddings.py` on generated corpora of N and 10N
documents and samples, twice a second, the proportional set size (PSS: shared pages such
as Ray's object store counted once) of the driver and every process under it: the local
Ray's GCS, raylet, object store and workers. Bounded memory means the 10N peak stays
within 1.25x of the N peak. Appends the numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")


def _shmem_pss(pid: int) -> int:
    """The PSS of the shared-memory mappings of ``pid`` (Ray's object store), in bytes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss_Shmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(root: psutil.Process) -> tuple[int, dict[str, int]]:
    """Total PSS of ``root`` and its descendants, and PSS by process kind.

    The kind "object store pages" is the part of the total that is shared memory: the
    pages of Ray's object store that processes have touched, counted once.
    """
    total, kinds = 0, {}
    for process in [root, *root.children(recursive=True)]:
        try:
            pss = process.memory_full_info().pss
            kind = process.name() if process.pid != root.pid else "driver"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
        kinds[kind] = kinds.get(kind, 0) + pss
        kinds["(object store pages)"] = kinds.get("(object store pages)", 0) + _shmem_pss(process.pid)
    return total, kinds


def measured_run(corpus: str, output: str, conf: list[str]) -> tuple[float, int, dict[str, int]]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "headrace.cli", "submit", "pipelines/doc_embeddings.py", "--ds", "2026-01-01",
               "--conf", f"input={corpus}", "--conf", f"output={output}", "--conf", "headrace.progress=false"]
    for pair in conf:
        command += ["--conf", pair]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, at_peak = 0, {}
    done = threading.Event()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: (stderr.append(process.stderr.read()), done.set()))
    reader.start()
    root = psutil.Process(process.pid)
    while process.poll() is None:
        total, kinds = tree_pss(root)
        if total > peak:
            peak, at_peak = total, kinds
        time.sleep(0.5)
    reader.join()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"run failed ({process.returncode}):\n{stderr[0][-3000:]}")
    return elapsed, peak, at_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="passed to headrace submit")
    args = parser.parse_args()
    from pipelines.demo_data import write_documents

    results = {}
    for count in (args.docs, 10 * args.docs):
        corpus = os.path.join(WORK, f"corpus-{count}")
        if not os.path.isdir(corpus):
            write_documents(corpus, count=count, seed=2026)
        files = sum(len(f) for _, _, f in os.walk(corpus))
        elapsed, peak, at_peak = measured_run(corpus, os.path.join(WORK, f"out-memory-{count}"), args.conf)
        results[count] = (files, elapsed, peak)
        print(f"{files:>6} docs  {elapsed:7.1f} s  {files / elapsed:6.2f} docs/s  peak {peak / 2**30:.2f} GiB", flush=True)
        top = sorted(at_peak.items(), key=lambda item: -item[1])[:8]
        print("    at the peak: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in top), flush=True)

    (n_files, n_s, n_peak), (m_files, m_s, m_peak) = results.values()
    lines = [
        f"### Peak memory, doc-embeddings, {n_files} vs {m_files} documents — {dt.date.today().isoformat()}",
        "",
        f"Command: `python benchmarks/memory.py --docs {args.docs}{''.join(' --conf ' + c for c in args.conf)}`. Peak PSS of the driver and all local Ray",
        "processes (GCS, raylet, object store, workers), sampled every 0.5 s.",
        "",
        "| documents | wall s | docs/s | peak memory |",
        "|---:|---:|---:|---:|",
        f"| {n_files} | {n_s:.1f} | {n_files / n_s:.2f} | {n_peak / 2**30:.2f} GiB |",
        f"| {m_files} | {m_s:.1f} | {m_files / m_s:.2f} | {m_peak / 2**30:.2f} GiB |",
        "",
        f"10N peak / N peak: {m_peak / n_peak:.2f}x (bound: 1.25x).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(HERE, "RESULTS.md"), "a") as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
