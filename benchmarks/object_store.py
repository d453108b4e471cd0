"""Benchmark: headrace on an S3 store (a local moto server) against local disk, in one run.

    python benchmarks/object_store.py [--objects 100000] [--docs 1000]

1. Listing: ``headrace.Files(url).list()`` over --objects objects in a bucket, against the
   same number of files on disk; the requests the listing makes are counted by a
   pass-through proxy (pages of the paginated listing, and any request per object).
2. The doc-embeddings job over the demo corpus (--docs documents), as whole processes
   (`headrace submit`, start-up included): local disk to local disk, against S3 to S3.
Appends the numbers to benchmarks/RESULTS.md. The S3 server runs on this machine, so the
store's network latency is not in these numbers: what they show is headrace's own
overhead on a store (requests, copies, the publish), not a real bucket's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from doc_embeddings import machine  # noqa: E402
from fixtures.flaky_s3_proxy import FlakyS3Proxy  # noqa: E402


class _SkipJobs(Exception):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def moto_environment(endpoint: str) -> dict[str, str]:
    """The environment that points s3fs (and every subprocess) at the moto server at ``endpoint``."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("moto did not start")


@contextlib.contextmanager
def moto_bucket(name: str, baseline_rev: str | None, packages: tuple[str, ...] = ("headrace",)):
    """A moto server with the bucket ``name``, its settings in this process's environment
    (and so in its children's): yields (environment, filesystem, {label: code root}, see
    revisions.code_roots); the server is stopped and the scratch folder removed after."""
    import fsspec

    from revisions import code_roots

    scratch = tempfile.mkdtemp(prefix=f"headrace-{name}-")
    server, endpoint = start_moto()
    env = {**os.environ, **moto_environment(endpoint)}
    os.environ.update(env)
    try:
        codes = code_roots(baseline_rev, scratch, packages)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(name)
        yield env, fs, codes
    finally:
        server.terminate()
        shutil.rmtree(scratch, ignore_errors=True)


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def in_steps(command: list[str], env: dict, cwd: str, steps: tuple[str, ...], at_step, what: str) -> dict:
    """Run ``command``, a process that prints each of ``steps`` in turn and then waits for a
    line on its stdin; ``at_step()`` is called at each (e.g. to read a proxy's counters
    between two parts of the work). Returns the JSON document on its last line of output."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for step in steps:
        line = process.stdout.readline().strip()
        if line != step:
            process.kill()
            sys.exit(f"{what} failed:\n{line}\n{process.stderr.read()[-3000:]}")
        at_step()
        process.stdin.write("\n")
        process.stdin.flush()
    out, err = process.communicate(timeout=1800)
    if process.returncode != 0:
        sys.exit(f"{what} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def best_of(runs: int, operation) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = operation()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()

    server, endpoint = start_moto()
    aws = moto_environment(endpoint)
    os.environ.update(aws)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    import fsspec

    from headrace import Files

    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        for name in ("bench-many", "bench-docs", "bench-out"):
            fs.mkdir(name)

        # 1. Listing
        local_many = os.path.join(WORK, f"many-{args.objects}")
        if not os.path.isdir(local_many):
            for index in range(args.objects):
                folder = os.path.join(local_many, f"{index // 1000:03d}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"doc-{index:06d}.txt"), "wb") as handle:
                    handle.write(b"x")
        started = time.perf_counter()
        names = {f"bench-many/{i // 1000:03d}/doc-{i:06d}.txt": b"x" for i in range(args.objects)}
        keys = list(names)
        for start in range(0, len(keys), 10_000):
            fs.pipe({k: names[k] for k in keys[start:start + 10_000]})
        upload_s = time.perf_counter() - started
        local_s, local_rows = best_of(3, lambda: Files(local_many).list().num_rows)
        s3_s, s3_rows = best_of(3, lambda: Files("s3://bench-many/").list().num_rows)
        assert local_rows == s3_rows == args.objects, (local_rows, s3_rows)
        with FlakyS3Proxy(endpoint, {}) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            type(fs).clear_instance_cache()  # a cached filesystem would still talk to moto directly
            Files("s3://bench-many/").list()
            requests = dict(proxy.counts)
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            type(fs).clear_instance_cache()

        # 2. doc-embeddings, local and S3 (--docs 0 skips it)
        local_job = s3_job = documents = 0
        if not args.docs:
            raise _SkipJobs
        corpus = os.path.join(WORK, f"corpus-{args.docs}")
        if not os.path.isdir(corpus):
            subprocess.run([sys.executable, "-m", "headrace.cli", "demo-data", corpus, "--count", str(args.docs)],
                           cwd=ROOT, env=env, check=True, capture_output=True)
        documents = 0
        for path, _, files in os.walk(corpus):
            for name in files:
                if name.endswith((".html", ".htm", ".md", ".txt")):
                    relative = os.path.relpath(os.path.join(path, name), corpus)
                    fs.pipe_file(f"bench-docs/corpus/{relative}", open(os.path.join(path, name), "rb").read())
                    documents += 1
        output = os.path.join(WORK, "store-local-out")
        shutil.rmtree(output, ignore_errors=True)
        submit = [sys.executable, "-m", "headrace.cli", "submit", "pipelines/doc_embeddings.py", "--ds", "2026-11-01",
                  "--conf", "headrace.progress=false"]
        local_job = timed([*submit, "--conf", f"input={corpus}", "--conf", f"output={output}"], env)
        s3_job = timed([*submit, "--conf", "input=s3://bench-docs/corpus", "--conf", "output=s3://bench-out/emb"], env)
    except _SkipJobs:
        pass
    finally:
        server.terminate()

    lines = [
        f"## Object store: S3 (moto server on this machine) against local disk ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/object_store.py --objects {args.objects} --docs {args.docs}`.",
        "",
        "| what | local disk | S3 (moto) | S3 / local |",
        "|---|---:|---:|---:|",
        f"| list {args.objects:,} objects (`Files.list`, best of 3) | {local_s:.2f} s | {s3_s:.2f} s | {s3_s / local_s:.2f}x |",
        *([f"| doc-embeddings, {documents:,} documents, whole process | {local_job:.1f} s | {s3_job:.1f} s | "
           f"{s3_job / local_job:.2f}x |"] if documents else []),
        "",
        f"Requests of one S3 listing of {args.objects:,} objects: "
        + ", ".join(f"{kind} {count}" for kind, count in sorted(requests.items()))
        + f" (uploading them took {upload_s:.0f} s).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        with open(os.path.join(HERE, "RESULTS.md"), "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
