"""Listing a local input: every file the user pointed at is an input, or named as ignored;
none is left out unsaid, and none is an input twice."""

import json
import os
import posixpath
import subprocess

import fsspec
import pytest

import headrace
from conftest import AS_IF_NOT_ROOT, HEADRACE, ROOT, write
from headrace.source import Files
from headrace.tables import Tables


def doc_job_as_if_not_root(folder, mode, *args):
    """`headrace submit` of the doc job with ``folder`` at ``mode`` for its run, as a user
    without root's capabilities (root reads and writes whatever the mode says)."""
    command = [*HEADRACE, "submit", os.path.join(ROOT, "pipelines", "doc_embeddings.py"), "--master", "local[1]", *args]
    if os.geteuid() == 0:
        command = [*AS_IF_NOT_ROOT, *command]
    os.chmod(folder, mode)
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        os.chmod(folder, 0o755)


def sources(listing):
    return [uri.removeprefix("file://") for uri in listing.records.column("source").to_pylist()]


@pytest.fixture
def linked(tmp_path):
    """in/ holds a file, a link to a folder elsewhere, a second link to that folder, a link
    back up the tree, a link to itself's parent and a broken link."""
    elsewhere, folder = tmp_path / "elsewhere", tmp_path / "in"
    write(str(elsewhere), "2026-11-28/a.txt", b"a document in a linked folder")
    write(str(elsewhere), "2026-11-28/deeper/b.txt", b"and one further down")
    write(str(folder), "own.txt", b"a document of the folder itself")
    os.symlink(elsewhere / "2026-11-28", folder / "current")
    os.symlink(elsewhere / "2026-11-28", folder / "latest")  # the same folder again: its files once
    os.symlink(folder, folder / "loop")  # back up the tree: walked once, not forever
    os.symlink(tmp_path / "gone", folder / "dangling.txt")
    return folder


def test_a_linked_folder_is_read_each_folder_once_a_broken_link_is_an_input(linked):
    listing = Files(str(linked), extensions=(".txt",)).listing()
    found = sources(listing)
    assert found == sorted(found) and len(found) == len(set(found))
    # The folder two links point to is read once, through the first of them (in name order).
    in_link = [path for path in found if path.startswith(f"{linked}/current/")]
    assert in_link == [f"{linked}/current/a.txt", f"{linked}/current/deeper/b.txt"]
    assert f"{linked}/own.txt" in found and f"{linked}/dangling.txt" in found  # reading it fails, with the reason
    assert len(found) == 4 and listing.ignored == ()
    sizes = dict(zip(found, listing.sizes.to_pylist()))
    assert sizes[f"{linked}/own.txt"] == 31 and sizes[f"{linked}/dangling.txt"] is None
    assert sizes[in_link[0]] == 29  # the linked file's own size, not the link's


def test_a_glob_matches_through_linked_folders_as_through_real_ones(linked):
    assert sources(Files(f"{linked}/**/*.txt").listing()) == sources(Files(str(linked), extensions=(".txt",)).listing())
    assert [os.path.basename(p) for p in sources(Files(f"{linked}/current/*.txt").listing())] == ["a.txt"]
    assert sources(Files(f"{linked}/*/deeper/*").listing()) == [f"{linked}/current/deeper/b.txt"]


@pytest.mark.parametrize("protocol", ["file", "s3", "gs"])
def test_a_glob_that_matches_folders_reads_the_files_in_them(request, protocol, tmp_path):
    """As Spark reads `crawl/2026-11-2*`: before, only files the glob matched themselves
    were inputs, and a glob of day folders `matched no .txt files`. On a bucket a glob is
    expanded a part at a time; it finds what the same glob finds on a local disk (before,
    a folder that a `**` glob matched was not read on a bucket: `crawl/**/deep` matched no
    files there). Hidden names below the glob's root are never read, in a folder it matches
    too (before, `crawl/*` read a local `crawl/_temporary/`, a job's unfinished output)."""
    files = {"2026-11-20/a.txt": b"a", "2026-11-21/deep/b.txt": b"b", "2026-11-21/_SUCCESS": b"",
             "2026-11-21/.c.txt": b"hidden", "2026-11-29.txt": b"a file the glob matches", "2026-10-31/d.txt": b"d",
             "_temporary/0/2026-11-22/e.txt": b"a job's unfinished output", "x/warc/f.txt": b"f",
             "x/wet/g.txt": b"g", "y/warc/sub/h.txt": b"h"}
    if protocol in ("s3", "gs"):
        request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[protocol])
        from conftest import bucket

        fs = bucket(protocol, "hr-glob-folders")
        markers = ("crawl/", "crawl/2026-11-21/deep/")  # as the S3 console's "Create folder" makes them
        # before: markers were reported as files of a type not read
        fs.pipe({f"hr-glob-folders/crawl/{name}": data for name, data in files.items()}
                | {f"hr-glob-folders/{marker}": b"" for marker in markers} | {"hr-glob-folders/crawl-old/i.txt": b"i"})
        crawl = f"{protocol}://hr-glob-folders/crawl"
    else:
        for name, data in files.items():
            write(str(tmp_path / "crawl"), name, data)
        write(str(tmp_path / "crawl-old"), "i.txt", b"i")
        crawl = f"file://{tmp_path}/crawl"
    days = ["2026-11-20/a.txt", "2026-11-21/deep/b.txt"]
    for glob, expected in ((f"{crawl}/2026-11-2*", [*days, "2026-11-29.txt"]),
                           (f"{crawl}/2026-1?-*/**", ["2026-10-31/d.txt", *days]),
                           (f"{crawl}/*/deep", ["2026-11-21/deep/b.txt"]),
                           (f"{crawl}/**/deep", ["2026-11-21/deep/b.txt"]),
                           (f"{crawl}/**/2026-11-2?", days),
                           (f"{crawl}/*/warc/*", ["x/warc/f.txt", "y/warc/sub/h.txt"]),
                           (f"{crawl}/[xy]/w?t", ["x/wet/g.txt"]),
                           (f"{crawl}*/*.txt", ["../crawl-old/i.txt", "2026-11-29.txt"]),
                           (f"{crawl}/*", ["2026-10-31/d.txt", *days, "2026-11-29.txt", "x/warc/f.txt", "x/wet/g.txt",
                                           "y/warc/sub/h.txt"])):
        listed = Files(glob, extensions=(".txt",)).listing()
        assert [posixpath.relpath(u, crawl) for u in listed.records.column("source").to_pylist()] == expected, glob
        assert listed.sizes.to_pylist() == [len(files.get(name, b"i")) for name in expected], glob
        assert not listed.ignored, glob  # _SUCCESS and .c.txt are hidden, as in a folder given by name
    assert not Files(crawl, extensions=(".txt",)).listing().ignored
    with pytest.raises(headrace.ConfigError, match="matched no"):
        Files(f"{crawl}/_*", extensions=(".txt",)).listing()
    # `{a,b}` alternatives, as Spark's glob and the shell read them (before: "does not exist").
    listed = Files(f"{crawl}/{{2026-11-20,2026-10-*,2026-11-30}}", extensions=(".txt",)).listing()
    assert [u.split("/crawl/", 1)[1] for u in listed.records.column("source").to_pylist()] == [
        "2026-10-31/d.txt", "2026-11-20/a.txt"]
    assert listed.warnings == (f"input '{crawl}/{{2026-11-20,2026-10-*,2026-11-30}}': 1 of its 3 alternatives match "
                               f"nothing: {crawl}/2026-11-30",)
    with pytest.raises(headrace.ConfigError, match=r"does not exist \(none of its 2 alternatives does\)"):
        Files(f"{crawl}/{{2026-12-01,2026-12-02}}").listing()


def test_brace_alternatives_multiply_nest_and_a_group_without_a_comma_is_text():
    from headrace.source import brace_alternatives

    assert brace_alternatives("d/{x,y}/*") == ["d/x/*", "d/y/*"]
    assert brace_alternatives("{a,b}/{c,d}") == ["a/c", "a/d", "b/c", "b/d"]
    assert brace_alternatives("{a,b{1,2}}.txt") == ["a.txt", "b1.txt", "b2.txt"]
    assert brace_alternatives("{x}/{a,a}") == ["{x}/a"] and brace_alternatives("x{a,b") == ["x{a,b"]


def test_a_file_name_that_is_not_utf8_is_named_in_an_exit_2(tmp_path):
    """Before, every run failed with `UnicodeEncodeError: ... surrogates not allowed` (exit 1)."""
    write(str(tmp_path), "good.txt", b"a document")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt"), "wb") as handle:  # Latin-1 bytes
        handle.write(b"another")
    with pytest.raises(headrace.ConfigError, match=rf"1 file name\(s\) are not UTF-8 \({tmp_path}/caf\\xe9.txt\): rename"):
        Files(str(tmp_path)).listing()


@pytest.mark.parametrize("protocol", ["file", "s3"])
def test_a_folder_named_like_a_glob_is_read_as_it_is_named(request, protocol, tmp_path):
    """On a bucket too (before, `s3://b/run[1]` read `run1`, the glob's match)."""
    if protocol == "s3":
        request.getfixturevalue("s3_server")
        from conftest import bucket

        bucket("s3", "hr-glob-named").pipe({"hr-glob-named/run[1]/x.txt": b"the folder's name has brackets",
                                            "hr-glob-named/run1/y.txt": b"what the brackets would match as a glob"})
        folder = "s3://hr-glob-named"
    else:
        write(str(tmp_path / "run[1]"), "x.txt", b"the folder's name has brackets")
        write(str(tmp_path / "run1"), "y.txt", b"what the brackets would match as a glob")
        folder = str(tmp_path)
    assert [os.path.basename(p) for p in sources(Files(f"{folder}/run[1]").listing())] == ["x.txt"]
    assert [os.path.basename(p) for p in sources(Files(f"{folder}/run[1]/x.txt").listing())] == ["x.txt"]
    assert [os.path.basename(p) for p in sources(Files(f"{folder}/run[0-9]").listing())] == ["y.txt"]
    with pytest.raises(headrace.ConfigError, match="does not exist"):
        Files(f"{folder}/nothing-here").listing()


def test_files_of_other_types_are_listed_as_ignored_hidden_ones_are_not(tmp_path):
    write(str(tmp_path), "shard.jsonl", b'{"text": "x"}\n')
    write(str(tmp_path), "shard.jsonl.zst", b"(\xb5/\xfd")
    write(str(tmp_path), "README", b"no extension")
    write(str(tmp_path), "_SUCCESS", b"")
    write(str(tmp_path), ".part-0.crc", b"")
    listing = Tables(str(tmp_path)).listing()
    assert sources(listing) == [f"{tmp_path}/shard.jsonl"]
    assert listing.ignored == (f"file://{tmp_path}/README", f"file://{tmp_path}/shard.jsonl.zst")


def test_an_unreadable_folder_in_the_input_is_exit_2_not_left_out(tmp_path):
    """fsspec's find passed over a folder it could not list, and its files were left out of
    the run unsaid (the dry run said 1 input file here)."""
    folder = tmp_path / "in"
    write(str(folder), "a.txt", b"a readable document")
    write(str(folder / "secret"), "b.txt", b"a document in a folder nobody may list")
    result = doc_job_as_if_not_root(folder / "secret", 0, "--dry-run", "--conf", f"input={folder}",
                                    "--conf", f"output={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr
    assert f"input folder {folder}/secret cannot be listed: Permission denied" in result.stderr.splitlines()[-1]


def test_an_output_inside_the_input_folder_is_never_read_as_input(tmp_path):
    """`--conf input=data --conf output=data/emb`: the table job took its own Parquet output
    of earlier dates as input (more of it every night); the doc job reported it as ignored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from headrace.config import EngineConf
    from headrace.runner import list_inputs
    from pipelines.doc_embeddings import pipeline as doc_embeddings
    from pipelines.table_embeddings import pipeline as table_embeddings

    write(str(tmp_path), "shard.jsonl", b'{"text": "x"}\n')
    write(str(tmp_path), "page.txt", b"a document")
    earlier = tmp_path / "emb" / "ds=2026-11-01"
    earlier.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["an embedded chunk"]}), earlier / "part-00000.parquet")
    (earlier / "_SUCCESS").write_text("{}")
    tables = list_inputs(table_embeddings(input=str(tmp_path), output=str(tmp_path / "emb")), EngineConf())
    assert sources(tables) == [f"{tmp_path}/shard.jsonl"]
    assert tables.ignored == {"files": 1, "by_extension": {".txt": 1}, "examples": [f"file://{tmp_path}/page.txt"]}
    docs = list_inputs(doc_embeddings(input=str(tmp_path), output=str(tmp_path / "emb")), EngineConf())
    assert sources(docs) == [f"{tmp_path}/page.txt"] and docs.ignored["by_extension"] == {".jsonl": 1}
    with pytest.raises(headrace.ConfigError, match=r"and 1 under the output, which a run never reads"):
        list_inputs(table_embeddings(input=str(earlier), output=str(tmp_path / "emb")), EngineConf())


def test_an_output_the_run_may_not_write_is_exit_2_before_ray_starts_and_in_a_dry_run(tmp_path):
    """Before: exit 1, `failed: PermissionError` (or NotADirectoryError where a file is in
    the way), which a scheduler retries to no end; then exit 2, but only at the lock,
    after Ray had started, and a dry run said nothing."""
    write(str(tmp_path / "in"), "a.txt", b"a document")
    (tmp_path / "locked").mkdir()
    common = ("--conf", f"input={tmp_path / 'in'}", "--conf", f"output={tmp_path / 'locked' / 'out'}",
              "--conf", "headrace.progress=false", "--report", str(tmp_path / "report.json"))
    for dry_run in ((), ("--dry-run",)):
        result = doc_job_as_if_not_root(tmp_path / "locked", 0o555, *common, *dry_run)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.splitlines()[-1] == (f"headrace: error: cannot write the output at "
                                                  f"{tmp_path / 'locked' / 'out'}: Permission denied (in {tmp_path / 'locked'})")
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["status"] == "invalid"
        assert report["exit_code"] == 2 and "Permission denied" in report["reason"]
    (tmp_path / "afile").write_text("a file where the output's folder would go")
    for output in (tmp_path / "afile", tmp_path / "afile" / "out"):
        in_the_way = subprocess.run(
            [*HEADRACE, "submit", os.path.join(ROOT, "pipelines", "doc_embeddings.py"), "--dry-run",
             "--conf", f"input={tmp_path / 'in'}", "--conf", f"output={output}"],
            capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert in_the_way.returncode == 2, in_the_way.stderr[-3000:]
        assert in_the_way.stderr.splitlines()[-1] == (
            f"headrace: error: cannot write the output at {output}: {tmp_path / 'afile'} is a file, not a folder")
    backfill = subprocess.run(
        [*HEADRACE, "backfill", os.path.join(ROOT, "pipelines", "doc_embeddings.py"), "--dry-run", "--start",
         "2026-11-01", "--end", "2026-11-02", "--conf", f"input={tmp_path / 'in'}", "--conf", f"output={output}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert backfill.returncode == 2 and backfill.stdout.count("is a file, not a folder") == 2, backfill.stdout
    assert not (tmp_path / "locked" / "out").exists() and not os.listdir(tmp_path / "locked")


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_a_bucket_listing_leaves_no_copy_of_the_objects_details_in_the_driver(request, protocol):
    """s3fs's and gcsfs's find keep the details of every object they list in the filesystem's
    cache for the life of the process: before, a run's driver held 1.2 KB per S3 object
    (1.9 KB per GCS object; a GiB or two per million inputs) after its listing, on top of the
    listing itself, all run long."""
    import gc
    import tracemalloc

    request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[protocol])
    from conftest import bucket

    name, count = f"hr-listing-memory-{protocol}", {"s3": 600, "gs": 12}[protocol]  # the GCS emulator: 1 s an upload
    fs = bucket(protocol, name)
    fs.pipe({f"{name}/crawl/d{i % 7}/doc-{i:04d}.txt": b"x" for i in range(count)})
    source = Files(f"{protocol}://{name}/crawl", extensions=(".txt",))
    source.listing()  # imports and the filesystem's own first-use state
    gc.collect()
    tracemalloc.start()
    try:
        listing = source.listing()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert listing.records.num_rows == count
    assert not fsspec.filesystem(protocol).dircache  # the instance every listing of the process shares
    if protocol == "s3":  # enough objects to tell their details from the clients' own few KB
        assert held < count * 100, f"{held / count:.0f} bytes per object held after the listing"


def test_a_gcs_listing_reads_every_page(gcs_server, monkeypatch):
    """A GCS folder or glob is listed by the store's own paged listing call (gcsfs's find
    gathers every object's details first, and stops at 10,000,000 objects without a word:
    its listing's default ``max_results``). The emulator answers in one page whatever the
    page size asked, so a proxy pages its answers as GCS does (fixtures/paging_gcs_proxy.py),
    at 3 entries a page here: every object is found with its size, across pages, with folders
    and objects of a delimited listing split between them; none of a longer prefix, hidden
    names and folder markers left out."""
    import gcsfs

    from fixtures.paging_gcs_proxy import PagingGcsProxy
    from conftest import bucket
    from headrace import source

    fs = bucket("gs", "hr-listing-pages")
    names = [f"crawl/d{i % 3}/doc-{i:02d}.txt" for i in range(11)] + [f"crawl/top-{i}.txt" for i in range(11, 14)]
    fs.pipe({f"hr-listing-pages/{name}": b"x" * i for i, name in enumerate(names)}
            | {"hr-listing-pages/crawl/_hidden/a.txt": b"h", "hr-listing-pages/crawl/d9/": b"",
               "hr-listing-pages/crawl-old/b.txt": b"b"})
    expected = {f"gs://hr-listing-pages/{name}": i for i, name in enumerate(names)}
    monkeypatch.setattr(source, "GCS_PAGE", 3)
    with PagingGcsProxy(gcs_server["STORAGE_EMULATOR_HOST"]) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        gcsfs.GCSFileSystem.clear_instance_cache()
        try:
            for url, want in (("gs://hr-listing-pages/crawl", expected),
                              ("gs://hr-listing-pages/crawl/*/*.txt", {u: size for u, size in expected.items() if "/d" in u}),
                              ("gs://hr-listing-pages/crawl/**/*.txt", expected),
                              ("gs://hr-listing-pages/crawl/*", expected)):
                pages = proxy.pages
                listing = Files(url, extensions=(".txt",)).listing()
                assert dict(zip(listing.records.column("source").to_pylist(), listing.sizes.to_pylist())) == want, url
                assert listing.ignored == (), url
                assert proxy.pages - pages >= len(want) // 3, url  # read page by page
        finally:
            gcsfs.GCSFileSystem.clear_instance_cache()
