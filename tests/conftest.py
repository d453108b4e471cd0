import contextlib
import os
import random
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gcsfs reads these when it is imported: the GCS emulator speaks no hierarchical-namespace API.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import socket
import subprocess
import time

import pytest

from headrace import EngineConf
from pipelines.demo_data import broken_documents, html_document, markdown_document, text_document

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADRACE = [sys.executable, "-m", "headrace.cli"]
# Root reads any file whatever its mode; without these two capabilities it is refused like anyone.
AS_IF_NOT_ROOT = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                  "--inh-caps=-dac_override,-dac_read_search"]
QUIET = EngineConf(progress=False)


@pytest.fixture(scope="session")
def ray_cluster(s3_server, gcs_server):
    """One local Ray for the whole session: more CPU slots than cores, no GPUs. The
    storage emulators start first, so that its workers know where the buckets are: runs
    in this process can read and write them too."""
    import ray

    # Stages defined in test modules must be importable by the workers too.
    tests = os.path.join(ROOT, "tests")
    ray.init(
        address="local", num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests, ROOT]), **s3_server, **gcs_server}},
    )
    yield ray
    ray.shutdown()


def write(directory, name, data: bytes) -> str:
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def good_corpus(directory, count=12, seed=1, long_every=4) -> list[str]:
    """HTML, markdown and text documents; every ``long_every``-th one spans several chunks."""
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        paragraphs = 30 if index % long_every == 0 else rng.randint(1, 4)
        kind = ("html", "md", "txt")[index % 3]
        maker = {"html": html_document, "md": markdown_document, "txt": text_document}[kind]
        paths.append(write(directory, f"{kind}/doc-{index:03d}.{kind}", maker(rng, f"Document {index}", paragraphs).encode()))
    return paths


LATIN1_TEXT = "Crème brûlée in Zürich: a naïve façade, déjà vu.\n"


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory):
    """Good documents plus every kind of bad file the acceptance criteria name."""
    directory = str(tmp_path_factory.mktemp("mixed"))
    good = good_corpus(directory, count=9, seed=3)
    good.append(write(directory, "txt/latin1.txt", (LATIN1_TEXT * 3).encode("cp1252")))
    bad = {
        name: write(directory, name, data)
        for name, data in broken_documents(random.Random(5)).items()
    }
    return directory, good, bad


def lines_corpus(directory, count, seed, exploding=()):
    """Files of 1 to 5 lines for tests/fixtures/slow_lines.py; a file in ``exploding`` ends
    with a line that makes it fail."""
    rng = random.Random(seed)
    for index in range(count):
        lines = [f"line {j} of file {index}: " + " ".join(rng.choice("abcdefgh") * 3 for _ in range(5))
                 for j in range(rng.randint(1, 5))]
        if index in exploding:
            lines.append("explode")
        write(directory, f"f-{index:03d}.txt", "\n".join(lines).encode())


def sigterm_when(command, ready, env, timeout=240, what="the run", signal_name="SIGTERM", again=False):
    """Start ``command``, send it SIGTERM (or ``signal_name``) once ``ready()``, as a scheduler
    stopping a task does (``again``: and every 10 ms until it ends, as an impatient user
    presses Ctrl-C); return (its exit code, its stderr, the processes it had started by then)."""
    import signal

    import psutil

    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, f"{what} ended before it was stopped: " + process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"{what} was not ready in time"
            time.sleep(0.2)
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(getattr(signal, signal_name))
        while again and process.poll() is None:
            time.sleep(0.01)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(getattr(signal, signal_name))
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr, children


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(command: list[str], port: int, what: str):
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise RuntimeError(f"{what} did not start on port {port}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode: a real S3 API on a local port. Its settings go into the
    environment, where s3fs (and every subprocess, Ray workers included) finds them."""
    port = free_port()
    server = _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "moto")
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    yield env
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def gcs_server():
    """gcp-storage-emulator: a GCS JSON API on a local port (STORAGE_EMULATOR_HOST)."""
    port = free_port()
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    server = _serve([emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"], port, "gcp-storage-emulator")
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    yield env
    server.terminate()
    server.wait(timeout=30)


def bucket(protocol: str, name: str):
    """A new bucket on the emulator of ``protocol``; returns its filesystem."""
    import fsspec

    fs = fsspec.filesystem(protocol, skip_instance_cache=True)
    fs.mkdir(name)
    return fs


@contextlib.contextmanager
def small_disk(path, size: str):
    """A tmpfs of ``size`` (``20k``) mounted at ``path``: a disk that fills up. Yields a
    function that resizes it (``remount("64m")``: space freed). Skips the test where this
    machine may not mount (it needs root's CAP_SYS_ADMIN)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")

    def remount(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
