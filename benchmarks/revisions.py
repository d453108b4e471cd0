"""Helpers for benchmarks that measure this checkout's code beside an earlier revision's in
the same run (``--baseline-rev``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_baseline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline-rev", help="an earlier git revision to measure beside this checkout")


def code_roots(rev: str | None, scratch: str, packages: tuple[str, ...] = ("headrace",)) -> dict[str, str]:
    """{label: folder to import headrace from}: this checkout, and ``rev``'s ``packages``
    (from ``git archive``, unpacked under ``scratch``) where one is given."""
    roots = {"this checkout": ROOT}
    if rev:
        label = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
        into = tempfile.mkdtemp(dir=scratch)
        archive = subprocess.run(["git", "archive", rev, *packages], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
        roots[f"revision {label}"] = into
    return roots


def command_line(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that makes these numbers again: the options given other than their defaults."""
    words = [f"python benchmarks/{script}"]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "no_record") or value == action.default:
            continue
        words.append(action.option_strings[0] if value is True else f"{action.option_strings[0]} {value:g}"
                     if isinstance(value, float) else f"{action.option_strings[0]} {value}")
    return " ".join(words)
