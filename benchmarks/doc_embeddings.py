"""Benchmark: the doc-embeddings job against two baselines doing the same work.

    python benchmarks/doc_embeddings.py [--docs 1000] [--repeat 1] [--corpus DIR]

Generates a corpus (headrace demo-data: short pages and long ones), or takes a folder of
real documents (``--corpus``, e.g. the Rust books that rustup installs), then times, as whole
processes including start-up: (a) a single-process loop with torch on all cores, in fp32
and (a') in bf16 autocast, (a'') Daft's native runner with a class UDF (when the bench
extra is installed, as `make bench` does), (b) an idiomatic hand-written Ray Data script, (c) `headrace
submit pipelines/doc_embeddings.py` with its default precision (auto: bf16 where the CPU
has native bf16), and (d) the same with embed_precision=fp32, the baselines' arithmetic.
Appends docs/s and the ratios to benchmarks/RESULTS.md, with each headrace run also
against the loop in the same precision, so a precision change is not mistaken for an
engine gain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")


def timed(command: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def machine() -> str:
    cores = os.cpu_count()
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cores} cores ({model}), {memory:.0f} GiB RAM, no GPU, Python {platform.python_version()}"


def publish(lines: list[str], record: bool = True) -> None:
    """Print a benchmark's section and append it to benchmarks/RESULTS.md (unless told not to)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if record:
        with open(os.path.join(HERE, "RESULTS.md"), "a") as handle:
            handle.write(text + "\n")


def forward_share(name: str) -> str:
    import json

    path = os.path.join(WORK, f"report-{name}.json")
    if not name.startswith("headrace") or not os.path.exists(path):
        return "-"
    with open(path) as handle:
        share = json.load(handle)["utilisation"]["EmbedText"]["forward_fraction"]
    return f"{share:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is reported")
    parser.add_argument("--only", choices=["loop", "loop-bf16", "raydata", "daft", "daft-bf16", "headrace", "headrace-fp32", "headrace-nogroup"],
                        action="append", help="default: all but headrace-nogroup")
    parser.add_argument("--no-record", action="store_true", help="print, do not append to RESULTS.md")
    parser.add_argument("--corpus", help="a folder of real documents instead of the generated corpus (--docs is ignored)")
    args = parser.parse_args()

    corpus = os.path.abspath(args.corpus) if args.corpus else os.path.join(WORK, f"corpus-{args.docs}")
    if not os.path.isdir(corpus):
        from pipelines.demo_data import write_documents

        write_documents(corpus, count=args.docs, seed=2026)
    files = sum(len(f) for _, _, f in os.walk(corpus))
    what = f"documents under {args.corpus}" if args.corpus else "documents"
    command = f"--corpus {args.corpus}" if args.corpus else f"--docs {args.docs}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    python = sys.executable
    commands = {
        "loop": [python, os.path.join(HERE, "baselines.py"), "loop", corpus, os.path.join(WORK, "out-loop")],
        "loop-bf16": [python, os.path.join(HERE, "baselines.py"), "loop", corpus, os.path.join(WORK, "out-loop"), "--bf16"],
        "raydata": [python, os.path.join(HERE, "baselines.py"), "raydata", corpus, os.path.join(WORK, "out-raydata")],
        "daft": [python, os.path.join(HERE, "baselines.py"), "daft", corpus, os.path.join(WORK, "out-daft")],
        "daft-bf16": [python, os.path.join(HERE, "baselines.py"), "daft", corpus, os.path.join(WORK, "out-daft"), "--bf16"],
        "headrace": [
            python, "-m", "headrace.cli", "submit", "pipelines/doc_embeddings.py", "--ds", "2026-01-01",
            "--conf", f"input={corpus}", "--conf", f"output={os.path.join(WORK, 'out-headrace')}",
            "--conf", "headrace.progress=false",
        ],
    }
    # The same job with the model in plain fp32, as the baselines run it, and without
    # length-grouped forward passes (to measure what grouping gains).
    commands["headrace-fp32"] = commands["headrace"] + ["--conf", "embed_precision=fp32"]
    commands["headrace-nogroup"] = commands["headrace"] + ["--conf", "embed_length_grouping=false"]
    for name in ("headrace", "headrace-fp32", "headrace-nogroup"):
        commands[name] += ["--report", os.path.join(WORK, f"report-{name}.json")]
    times: dict[str, float] = {}
    names = args.only or [n for n in commands if n != "headrace-nogroup"]
    try:
        import daft  # noqa: F401
    except ImportError:
        if any(n.startswith("daft") for n in names):
            print("daft is not installed (pip install -e '.[bench]', as make bench does): skipping it", file=sys.stderr)
            names = [n for n in names if not n.startswith("daft")]
    for name in names:
        best = float("inf")
        for _ in range(args.repeat):
            shutil.rmtree(os.path.join(WORK, f"out-{name.split('-')[0]}"), ignore_errors=True)
            if os.path.exists(os.path.join(WORK, f"report-{name}.json")):
                os.remove(os.path.join(WORK, f"report-{name}.json"))
            elapsed, _ = timed(commands[name], env)
            best = min(best, elapsed)
            print(f"{name:<9} {elapsed:7.1f} s  {files / elapsed:6.2f} docs/s", flush=True)
        times[name] = best

    lines = [
        f"### doc-embeddings, {files} {what} — {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Command: `{'' if args.corpus else 'make bench` (`'}python benchmarks/doc_embeddings.py "
        f"{command} --repeat {args.repeat}`{'' if args.corpus else ')'}.",
        "Whole-process wall time, start-up included; best of the repeats.",
        "",
        "| run | wall s | docs/s | vs loop (fp32) | vs loop, same precision | vs hand-written Ray Data | vs Daft, same precision | EmbedText forward share of actor time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    from stages.models import auto_precision

    auto = auto_precision("cpu")
    same = {"headrace": "loop-bf16" if auto == "bf16" else "loop", "headrace-fp32": "loop",
            "headrace-nogroup": "loop-bf16" if auto == "bf16" else "loop", "loop": "loop", "loop-bf16": "loop-bf16",
            "daft": "loop", "daft-bf16": "loop-bf16"}
    for name, seconds in times.items():
        vs_loop = f"{times['loop'] / seconds:.2f}x" if "loop" in times else "-"
        vs_same = f"{times[same[name]] / seconds:.2f}x" if same.get(name) in times else "-"
        vs_ray = f"{times['raydata'] / seconds:.2f}x" if "raydata" in times else "-"
        peer = {"headrace": "daft-bf16" if auto == "bf16" else "daft", "headrace-fp32": "daft",
                "headrace-nogroup": "daft-bf16" if auto == "bf16" else "daft"}.get(name, name if name.startswith("daft") else None)
        vs_daft = f"{times[peer] / seconds:.2f}x" if peer in times else "-"
        label = {
            "loop": "single-process loop (torch fp32, all cores)",
            "loop-bf16": "single-process loop (torch bf16 autocast, all cores)",
            "raydata": "hand-written Ray Data (fp32)",
            "daft": "Daft, native runner, class UDF (fp32)",
            "daft-bf16": "Daft, native runner, class UDF (bf16 autocast)",
            "headrace": f"headrace submit (embed_precision=auto: {auto} on this CPU)",
            "headrace-fp32": "headrace submit, embed_precision=fp32",
            "headrace-nogroup": "headrace submit, embed_length_grouping=false",
        }[name]
        lines.append(f"| {label} | {seconds:.1f} | {files / seconds:.2f} | {vs_loop} | {vs_same} | {vs_ray} | {vs_daft} | {forward_share(name)} |")
    if "headrace" in times and "headrace-nogroup" in times:
        lines.append("")
        lines.append(f"Length-grouped forward passes: {times['headrace-nogroup'] / times['headrace']:.2f}x "
                     "(headrace default vs the same with embed_length_grouping=false).")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        path = os.path.join(HERE, "RESULTS.md")
        header = "" if os.path.exists(path) else "# Benchmark results\n\n"
        with open(path, "a") as handle:
            handle.write(header + text + "\n")


if __name__ == "__main__":
    main()
