"""Benchmark: headrace's fixed cost, the part of every run that does not depend on its size.

    python benchmarks/fixed_cost.py [--repeat 3] [--no-record]

Both on one short HTML page of the demo corpus, whole processes, best of the repeats:

- the model's own minimum: a Python process that imports torch and transformers, loads
  all-MiniLM-L6-v2 and embeds the page's text (what any tool pays);
- `headrace submit pipelines/doc_embeddings.py` on that page, local master; its report's
  timings split the wall time into Ray start, listing, processing (worker and actor
  start, model load, the one batch), commit, and the rest (interpreter, imports and
  settings before; summary, HTML report and Ray shutdown after).

headrace's overhead is the difference. Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")

BARE = """
import sys
from stages.text import ChunkText, DecodeText, visible_text
import pyarrow as pa, torch
from transformers import AutoModel
from stages.text import default_model_path
from stages.models import pad
torch.set_num_threads(1)
text = visible_text(DecodeText().decode(open(sys.argv[1], "rb").read()))
ids = ChunkText().process(pa.table({"doc_id": [0], "text": [text]})).column("input_ids")
model = AutoModel.from_pretrained(str(default_model_path())).eval()
tokens, mask = pad(ids)
with torch.inference_mode():
    model(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask))
"""


def page() -> str:
    folder = os.path.join(WORK, "one-page")
    if not os.path.isdir(folder):
        from pipelines.demo_data import write_documents

        corpus = os.path.join(WORK, "corpus-fixed")
        write_documents(corpus, count=9, seed=2026)
        os.makedirs(folder)
        first = sorted(os.listdir(os.path.join(corpus, "html")))[0]
        shutil.copy(os.path.join(corpus, "html", first), folder)
    return folder


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sys.path[:0] = [ROOT, HERE]
    from doc_embeddings import machine, publish

    folder = page()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": ROOT}
    source = os.path.join(folder, os.listdir(folder)[0])
    bare = min(timed([sys.executable, "-c", BARE, source], env) for _ in range(args.repeat))
    print(f"bare model: {bare:.2f} s", flush=True)
    best, phases = float("inf"), {}
    for attempt in range(args.repeat):
        output, report = os.path.join(WORK, "out-fixed"), os.path.join(WORK, "report-fixed.json")
        shutil.rmtree(output, ignore_errors=True)
        wall = timed([sys.executable, "-m", "headrace.cli", "submit", "pipelines/doc_embeddings.py", "--ds", "2026-01-01",
                      "--conf", f"input={folder}", "--conf", f"output={output}", "--conf", "headrace.progress=false",
                      "--report", report], env)
        print(f"headrace: {wall:.2f} s", flush=True)
        if wall < best:
            timings = json.load(open(report))["timings"]
            best, phases = wall, {**timings, "rest_s": wall - timings["total_s"]}
    lines = [
        f"### Fixed cost: one page, whole process — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/fixed_cost.py --repeat {args.repeat}` (best of {args.repeat}).",
        "",
        "| run | wall s | Ray start | listing | processing | commit | interpreter, imports, report, shutdown |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| bare model (import, load, embed one page) | {bare:.2f} | - | - | - | - | - |",
        f"| headrace submit doc_embeddings | {best:.2f} | {phases['start_s']:.2f} | {phases['list_s']:.2f} | "
        f"{phases['process_s']:.2f} | {phases['commit_s']:.2f} | {phases['rest_s']:.2f} |",
        "",
        f"headrace's fixed overhead over the model's own: {best - bare:.2f} s.",
    ]
    publish(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
