"""The HTML run report, written for every run and opened in a real browser (headless Chromium)."""

import json
import os
import re
import subprocess

import numpy as np
from PIL import Image

from conftest import HEADRACE, ROOT, write

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def cli(*args):
    return subprocess.run([*HEADRACE, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def chromium(url, *flags):
    """Load ``url`` in headless Chromium; returns (stdout, the console messages it logged)."""
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,2600", *flags, url],
        capture_output=True, text=True, timeout=120,
    )
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_every_run_writes_a_self_contained_page_that_renders_with_no_console_errors(tmp_path):
    # Glob characters in the output's name: the reports were found by a glob of it, which
    # took `[1]` as a pattern (`headrace report`: "no run report"; no earlier runs shown).
    output = tmp_path / "out[1]"
    for index, text in enumerate(["a b c d", "explode"]):
        write(str(tmp_path / "in" / "2026-11-02"), f"doc-{index}.txt", text.encode())
    # A refused run gets its page too; it is the earlier run the second page shows beside its own.
    refused = cli("submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-03", "--conf",
                  f"input={tmp_path / 'in' / '2026-11-02'}", "--conf", f"output={output}",
                  "--conf", "headrace.progress=false", "--conf", "headrace.max_quarantine_fraction=0.1")
    assert refused.returncode == 3
    refused_pages = os.listdir(output / "_reports" / "ds=2026-11-03")
    assert len([name for name in refused_pages if name.endswith(".html")]) == 1
    result = cli("submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-02", "--conf",
                 f"input={tmp_path / 'in' / '2026-11-02'}", "--conf", f"output={output}", "--conf", "headrace.progress=false")
    assert result.returncode == 0, result.stderr[-2000:]

    folder = output / "_reports" / "ds=2026-11-02"
    pages = [folder / name for name in os.listdir(folder) if name.endswith(".html")]
    assert len(pages) == 1
    manifest = json.loads((output / "ds=2026-11-02" / "_SUCCESS").read_text())
    assert pages[0].name == f"{manifest['run_id']}.html" and f"report       {pages[0]}" in result.stdout
    page = pages[0].read_text()
    # plotly's script is in the page: no script or stylesheet is fetched from anywhere
    assert not re.search(r"<(script|link)\b[^>]*\b(src|href)=[\"']?(https?:)?//", page), "an external resource"
    assert "Plotly" in page and len(page) > 1_000_000
    refused_run = next(name for name in refused_pages if name.endswith(".html")).removesuffix(".html")
    assert f"2026-11-03 {refused_run[-6:]}" in page  # the earlier run, beside this one

    # The page again, on request.
    again = cli("report", str(output), "--ds", "2026-11-02")
    assert again.returncode == 0 and again.stdout.strip() == str(pages[0])
    assert cli("report", str(output), "--ds", "2026-10-01").returncode == 1

    dom, console = chromium(pages[0].as_uri(), "--dump-dom")
    assert console == [], console
    assert dom.count('class="main-svg"') >= 5  # plotly drew the charts: the scripts ran
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "word_count ds=2026-11-02" in text and "committed" in text
    assert "WordCount: RuntimeError" in text and "asked to explode" in text  # quarantine cause and a sample
    for label, value in (("inputs", "2"), ("rows out", "1"), ("rows quarantined", "1")):
        assert re.search(rf"{label}\s*</th>\s*<td[^>]*>\s*{value}\s*<", dom), label
    for title in ("Rows per second of each stage", "Input sizes", "This run (red) beside the earlier runs"):
        assert title in text, title

    shot = tmp_path / "shot.png"
    chromium(pages[0].as_uri(), f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # not a blank page

    # The console check can fail: a page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert any("Uncaught ReferenceError" in line for line in chromium(broken.as_uri(), "--dump-dom")[1])


def test_a_report_that_does_not_fit_on_the_disk_leaves_no_half_document_behind(tmp_path):
    """Before, a full disk left the report's JSON cut short, and `headrace report` for that
    date failed on it from then on (JSONDecodeError, exit 1)."""
    import pytest

    from conftest import small_disk
    from headrace import html_report

    disk = tmp_path / "disk"
    output = disk / "out"
    folder = output / "_reports" / "ds=2026-11-02"
    with small_disk(disk, "20k") as remount:
        html_report.write(str(output), {"ds": "2026-11-02", "run_id": "20261102T010000Z-aaaaaa", "status": "committed",
                                        "started_at": "2026-11-02T01:00:00+00:00"})
        large = {"ds": "2026-11-02", "run_id": "20261102T020000Z-bbbbbb", "status": "failed",
                 "started_at": "2026-11-02T02:00:00+00:00", "reason": "x" * 40_000}
        with pytest.raises(OSError, match="No space left on device"):
            html_report.write(str(output), large)
        assert sorted(p.name for p in folder.iterdir()) == ["20261102T010000Z-aaaaaa.html", "20261102T010000Z-aaaaaa.json"]

        # A document cut short by an older version is passed over, not the end of the command.
        (folder / "20261102T030000Z-cccccc.json").write_text('{"ds": "2026-11-02", "run_id": "2026')
        remount("64m")
        again = cli("report", str(output), "--ds", "2026-11-02")
        assert again.returncode == 0 and again.stdout.strip() == str(folder / "20261102T010000Z-aaaaaa.html"), again.stderr
