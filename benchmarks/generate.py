"""Benchmark: llm_generate against a plain transformers generate loop, on this CPU.

    python benchmarks/generate.py [--prompts 256] [--new 32] [--vllm] [--no-record]

A causal LM built from a transformers config (a 4-layer Llama, hidden size 256, random
weights, a word-level tokenizer of 1,000 words) is saved to benchmarks/work/bench-lm;
prompts of mixed length (4 to 200 words) are written as JSON Lines. Greedy, the same
max_new_tokens, whole processes with start-up:

- plain loop: one prompt at a time through ``model.generate`` (torch on all cores);
- headrace: ``headrace submit pipelines/llm_generate.py`` (CPU actors, one per core with
  one thread, prompts grouped by length and left-padded).

With ``--vllm`` (run it with an interpreter that has vLLM: ``.venv-vllm/bin/python`` of
``make test-vllm`` on CPU), also:

- vLLM alone: one ``LLM.generate`` over every prompt (fp32, as the others);
- headrace with ``--conf engine=vllm``.

Reports generated tokens/s (sum of generated tokens / wall time) and appends to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")

LOOP = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts_file, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
total = 0
for line in open(prompts_file):
    ids = torch.tensor([tokenizer(json.loads(line)["text"])["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    total += out.index(3) if 3 in out else len(out)
print(f"generated={total}")
"""


VLLM = r"""
import json, sys


def main():
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    folder, prompts_file, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [TokensPrompt(prompt_token_ids=tokenizer(json.loads(line)["text"])["input_ids"]) for line in open(prompts_file)]
    llm = LLM(model=folder, dtype="float32", seed=0)
    results = llm.generate(prompts, SamplingParams(max_tokens=new, temperature=0), use_tqdm=False)
    tokens = [list(r.outputs[0].token_ids) for r in results]
    print(f"generated={sum(t.index(3) if 3 in t else len(t) for t in tokens)}", flush=True)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process
    main()
"""


def build(prompts: int) -> tuple[str, str]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder, data = os.path.join(WORK, "bench-lm"), os.path.join(WORK, "bench-prompts")
    rng = random.Random(1)
    words = [f"w{i}" for i in range(1000)]
    if not os.path.isdir(folder):
        vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                eos_token="</s>").save_pretrained(folder)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(vocab), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                             pad_token_id=0, bos_token_id=2, eos_token_id=3)
        LlamaForCausalLM(config).eval().save_pretrained(folder)
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    with open(os.path.join(data, "prompts.jsonl"), "w") as handle:
        for index in range(prompts):
            text = " ".join(rng.choice(words) for _ in range(int(min(200, max(4, rng.lognormvariate(3.5, 0.8))))))
            handle.write(json.dumps({"id": f"p{index}", "text": text}) + "\n")
    return folder, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--vllm", action="store_true", help="also vLLM alone and headrace with engine=vllm")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sys.path[:0] = [ROOT, HERE]
    from doc_embeddings import machine, publish

    folder, data = build(args.prompts)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    loop = subprocess.run([sys.executable, "-c", LOOP, folder, os.path.join(data, "prompts.jsonl"), str(args.new)],
                          capture_output=True, text=True, env=env, check=True)
    loop_s = time.perf_counter() - started
    loop_tokens = int(loop.stdout.split("generated=")[1])
    headrace_s, headrace_tokens = submit(folder, data, args.new, env)
    rows = []
    if args.vllm:
        script = os.path.join(WORK, "vllm_alone.py")
        with open(script, "w") as handle:
            handle.write(VLLM)
        started = time.perf_counter()
        alone = subprocess.run([sys.executable, script, folder, os.path.join(data, "prompts.jsonl"), str(args.new)],
                               capture_output=True, text=True, env=env)
        alone_s = time.perf_counter() - started
        if alone.returncode != 0 or "generated=" not in alone.stdout:
            sys.exit(f"vLLM alone failed ({alone.returncode}):\n{alone.stderr[-3000:]}")
        alone_tokens = int(alone.stdout.split("generated=")[1].split()[0])  # vLLM logs to stdout after it
        engine_s, engine_tokens = submit(folder, data, args.new, env, "engine=vllm")
        rows = [
            f"| vLLM alone, one LLM.generate over every prompt (fp32) | {alone_s:.1f} | {alone_tokens} | "
            f"{alone_tokens / alone_s:.0f} | {alone_tokens / alone_s / (loop_tokens / loop_s):.2f}x |",
            f"| headrace submit pipelines/llm_generate.py --conf engine=vllm | {engine_s:.1f} | {engine_tokens} | "
            f"{engine_tokens / engine_s:.0f} | {engine_tokens / engine_s / (loop_tokens / loop_s):.2f}x |",
        ]
    lines = [
        f"### llm_generate against a plain generate loop — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/generate.py --prompts {args.prompts} --new {args.new}"
        f"{' --vllm' if args.vllm else ''}`. "
        "A 4-layer Llama (hidden 256, random weights) built from a config; prompts of 4 to 200 words; greedy; "
        "whole processes, start-up included.",
        "",
        "| run | wall s | generated tokens | tokens/s | vs loop |",
        "|---|---:|---:|---:|---:|",
        f"| plain loop, one prompt at a time (torch on all cores) | {loop_s:.1f} | {loop_tokens} | "
        f"{loop_tokens / loop_s:.0f} | 1.00x |",
        f"| headrace submit pipelines/llm_generate.py | {headrace_s:.1f} | {headrace_tokens} | "
        f"{headrace_tokens / headrace_s:.0f} | {headrace_tokens / headrace_s / (loop_tokens / loop_s):.2f}x |",
        *rows,
    ]
    publish(lines, record=not args.no_record)
    if loop_tokens != headrace_tokens:
        print(f"note: the loop generated {loop_tokens} tokens and headrace {headrace_tokens}", file=sys.stderr)


def submit(folder: str, data: str, new: int, env: dict, *conf: str) -> tuple[float, int]:
    """headrace submit pipelines/llm_generate.py: (wall seconds, generated tokens)."""
    import pyarrow.parquet as pq

    output = os.path.join(WORK, "out-generate")
    shutil.rmtree(output, ignore_errors=True)
    extra = [arg for pair in conf for arg in ("--conf", pair)]
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "headrace.cli", "submit", "pipelines/llm_generate.py", "--ds",
                          "2026-01-01", "--conf", f"input={data}", "--conf", f"output={output}", "--conf",
                          f"model={folder}", "--conf", f"max_new_tokens={new}", "--conf", "id_column=id",
                          "--conf", "headrace.progress=false", *extra], cwd=ROOT, capture_output=True, text=True,
                         env=env)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(run.stderr[-3000:])
    table = pq.read_table(os.path.join(output, "ds=2026-01-01"))
    return seconds, sum(table.column("generated_tokens").to_pylist())


if __name__ == "__main__":
    main()
