"""Hostile input in one doc-embeddings run: each file is processed or quarantined with a reason."""

import os
import subprocess

import pyarrow.parquet as pq

from conftest import AS_IF_NOT_ROOT, HEADRACE, ROOT, write

HOSTILE = os.path.join(ROOT, "tests", "fixtures", "hostile_docs.py")


def test_hostile_files_in_one_run(tmp_path):
    directory = tmp_path / "in"
    write(str(directory), "normal.txt", b"An ordinary document about rivers and bridges.")
    write(str(directory), "vanishing.txt", b"here at listing time, gone at reading time")
    write(str(directory), "binary.html", bytes(range(256)) * 64)
    write(str(directory), "nested.html", ("<div>" * 100_000 + "deep" + "</div>" * 100_000).encode())
    write(str(directory), "long-line.txt", ("river " * 50_000).encode())  # 300,000 characters, no newline
    write(str(directory), "huge-line.txt", ("bridge " * 7_200_000).encode())  # one line of 50.4 M characters
    os.chmod(write(str(directory), "unreadable.txt", b"secret"), 0)
    os.mkfifo(directory / "pipe.txt")  # opening it would wait for a writer: the run hung
    with open(directory / "huge.txt", "wb") as handle:  # 200 MB: refused before it is read
        handle.truncate(200 * 2**20)

    command = [*HEADRACE, "submit", HOSTILE, "--master", "local[2]", "--ds", "2026-08-01",
               "--conf", f"input={directory}", "--conf", f"output={tmp_path / 'out'}",
               "--conf", "max_chunks=1000"]  # the huge line is refused after 256,000 tokens, not 2,560,000
    if os.geteuid() == 0:
        command = [*AS_IF_NOT_ROOT, *command]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    data = pq.read_table(str(tmp_path / "out" / "ds=2026-08-01"))
    by_file = {}
    for source, index, count in zip(*(data.column(c).to_pylist() for c in ("source", "chunk_index", "num_chunks"))):
        by_file.setdefault(os.path.basename(source), set()).add((index, count))
    assert set(by_file) == {"normal.txt", "long-line.txt"}
    assert len(by_file["long-line.txt"]) > 100  # one 300,000-character line, many chunks
    quarantine = pq.read_table(str(tmp_path / "out" / "_quarantine" / "ds=2026-08-01")).to_pylist()
    reasons = {os.path.basename(q["source"]): (q["error_type"], q["message"]) for q in quarantine}
    assert reasons["vanishing.txt"][0] == "FileNotFoundError"
    assert reasons["unreadable.txt"][0] == "PermissionError"
    assert reasons["huge.txt"] == ("FileTooLarge", "file is larger than 67,108,864 bytes (209,715,200)")
    assert reasons["huge-line.txt"][0] == "TooManyChunks"
    assert "more than max_chunks=1,000 chunks" in reasons["huge-line.txt"][1]
    assert reasons["binary.html"][0] == "UndecodableText"
    assert reasons["nested.html"][0] == "HtmlTooDeep"
    assert reasons["pipe.txt"] == ("NotARegularFile", f"{directory}/pipe.txt is a named pipe, not a regular file: it is not read")
    assert len(quarantine) == 7 and data.num_rows == len(by_file["normal.txt"]) + len(by_file["long-line.txt"])
