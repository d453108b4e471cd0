"""The ``headrace`` command: submit, explain, backfill, demo-data."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import sys
import time
import traceback

import click

from headrace import config as conf_mod
from headrace import loader
from headrace.errors import HeadraceError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_QUALITY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _exits(command):
    """Map exceptions to DESIGN.md's exit codes with a one-line message."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return command(*args, **kwargs)
        except HeadraceError as exc:
            click.echo(f"headrace: error: {exc}", err=True)
            detail = getattr(exc, "detail", "")
            if detail:
                click.echo("  " + detail.rstrip().replace("\n", "\n  "), err=True)
            if exc.exit_code == EXIT_FAILED:
                click.echo("headrace: nothing was published; the previous partition is unchanged", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("headrace: interrupted; nothing was published", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - the last line of defence prints and exits 1
            if verbose:
                traceback.print_exc()
            message = str(exc).strip().splitlines()
            click.echo(f"headrace: failed: {type(exc).__name__}: {message[-1] if message else ''}", err=True)
            click.echo("headrace: nothing was published; the previous partition is unchanged", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def _logging(verbose: bool) -> None:
    logging.basicConfig(format="headrace: %(message)s", stream=sys.stderr)
    logging.getLogger("headrace").setLevel(logging.INFO if verbose else logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """headrace: streaming batch inference over unstructured data on Ray."""


_conf_options = [
    click.option("--conf", "conf_pairs", multiple=True, metavar="KEY=VALUE", help="A setting (repeatable)."),
    click.option("--properties-file", type=click.Path(), help="YAML file of settings."),
]


def _with(options):
    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def _resolve(pipeline, conf_pairs, properties_file, flags, ds, pipeline_args=()):
    factory = loader.load(pipeline)
    conf = conf_mod.parse_pairs(list(conf_pairs))
    flags = {**{f"headrace.{k}": v for k, v in flags.items()}, **conf_mod.parse_pipeline_args(list(pipeline_args))}
    run_conf = conf_mod.resolve(factory, properties_file=properties_file, conf=conf, flags=flags, ds=ds)
    return factory, run_conf, factory.build(**run_conf.settings)


def _code_files(factory) -> list[str]:
    """The pipeline's own file, for the fingerprint."""
    return [factory.source_file] if factory.source_file else []


@main.command()
@click.argument("pipeline")
@click.option("--master", "--address", default=None, help="local | local[N] | auto | ray://host:port")
@_with(_conf_options)
@click.option("--ds", help="Logical date YYYY-MM-DD (default: yesterday, UTC).")
@click.option("--name", help="Job name shown in the summary and manifest.")
@click.option("--num-cpus", type=int, help="Logical CPUs for a local Ray.")
@click.option("--num-gpus", type=int, help="GPUs for a local Ray.")
@click.option("--require-gpu", is_flag=True, default=None, help="Fail (exit 2) instead of falling back to CPU.")
@click.option("--resume/--no-resume", default=None,
              help="Keep what a killed run of the same ds and configuration staged (default: on).")
@click.option("--dry-run", is_flag=True, help="Check settings and list inputs; run nothing.")
@click.option("--verbose", "-v", is_flag=True)
@click.option("--report", type=click.Path(), help="Write the JSON run report here.")
@click.argument("pipeline_args", nargs=-1, type=click.UNPROCESSED)
@_exits
def submit(pipeline, master, conf_pairs, properties_file, ds, name, num_cpus, num_gpus, require_gpu, resume, dry_run, verbose, report, pipeline_args):
    """Run PIPELINE (path/to/pipeline.py or package.module:attr) for one logical date."""
    _logging(verbose)
    flags = dict(master=master, name=name, num_cpus=num_cpus, num_gpus=num_gpus, require_gpu=require_gpu,
                 resume=resume, verbose=verbose or None)
    factory, run_conf, built = _resolve(pipeline, conf_pairs, properties_file, flags, ds, pipeline_args)
    if dry_run:
        inputs = built.source.list()
        click.echo(built.explain())
        click.echo(f"dry run: ds={run_conf.ds}, {inputs.num_rows:,} input files; nothing was executed")
        return
    _run_one(built, run_conf, report, _code_files(factory))


def _run_one(built, run_conf, report, code_files=()):
    from headrace.report import summary, write_report
    from headrace.runner import run

    started = time.perf_counter()
    result = run(built, run_conf.ds, run_conf.engine, run_conf.as_dict(), code_files)
    click.echo(summary(result.manifest, time.perf_counter() - started))
    if report:
        write_report(report, result.manifest)


@main.command()
@click.argument("pipeline")
@_with(_conf_options)
@_exits
def explain(pipeline, conf_pairs, properties_file):
    """Print the compiled plan of PIPELINE: stages, pools, resources, schema, sink."""
    _, _, built = _resolve(pipeline, conf_pairs, properties_file, {}, None)
    click.echo(built.explain())


@main.command()
@click.argument("pipeline")
@click.option("--start", required=True, help="First logical date, YYYY-MM-DD.")
@click.option("--end", required=True, help="Last logical date (inclusive).")
@click.option("--master", "--address", default=None)
@_with(_conf_options)
@click.option("--verbose", "-v", is_flag=True)
@_exits
def backfill(pipeline, start, end, master, conf_pairs, properties_file, verbose):
    """Run PIPELINE once per logical date from --start to --end, oldest first."""
    _logging(verbose)
    first, last = conf_mod.parse_ds(start), conf_mod.parse_ds(end)
    days = []
    day = dt.date.fromisoformat(first)
    while day <= dt.date.fromisoformat(last):
        days.append(day.isoformat())
        day += dt.timedelta(days=1)
    if not days:
        from headrace.errors import ConfigError

        raise ConfigError(f"--start {first} is after --end {last}")
    # Check every date's configuration before the first one runs.
    planned = [_resolve(pipeline, conf_pairs, properties_file, {"master": master}, d) for d in days]
    for factory, run_conf, built in planned:
        _run_one(built, run_conf, None, _code_files(factory))


@main.command("demo-data")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--count", default=300, show_default=True, help="Number of documents (images: 26).")
@click.option("--seed", default=7, show_default=True)
@_exits
def demo_data(directory, count, seed):
    """Write sample documents and images (and a few broken ones) to DIRECTORY."""
    from pipelines.demo_data import write_documents, write_images

    documents = write_documents(directory, count=count, seed=seed)
    images = write_images(directory, seed=seed)
    click.echo(f"wrote {len(documents)} documents and {len(images)} images to {directory}")


def entry() -> None:
    """The console script: run the command, then leave with its exit code whatever happens
    at interpreter exit (a process that used both s3fs and deltalake can abort there,
    after its work is done, and would turn a committed run into a crash)."""
    try:
        code = main.main(standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("headrace: interrupted", err=True)
        code = EXIT_INTERRUPTED
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
