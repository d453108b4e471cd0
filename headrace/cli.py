"""The ``headrace`` command: submit, explain, backfill, demo-data."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import sys
import threading
import time
import traceback

import click

from headrace import config as conf_mod
from headrace import loader, native_stderr
from headrace.errors import STOP_SIGNALS, ConfigError, HeadraceError, StageBroken, Terminated, raise_terminated

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_QUALITY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
BROKEN = "broken stage"  # a backfill date's status when a stage was broken; the backfill stops there


def _exits(command):
    """Exit codes and messages (_reported), with Ray's native noise kept off stderr."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        # Commands that may start Ray: its native noise is for --verbose (headrace.native_stderr).
        quiet = native_stderr.filtered() if "verbose" in kwargs and not verbose else contextlib.nullcontext()
        with quiet:
            return _reported(command, args, kwargs)

    return wrapper


_PUBLISHING = ("submit", "backfill")  # the commands whose failure leaves a partition as it was


def _reported(command, args, kwargs):
    """Run a command; map exceptions to DESIGN.md's exit codes with a one-line message.
    SIGTERM (a scheduler stopping the task) is an interrupt, as Ctrl-C is. Only a command
    that could publish says that nothing was (``status`` failing to reach a bucket said so)."""
    verbose = kwargs.get("verbose", False)
    publishes = command.__name__ in _PUBLISHING
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, raise_terminated)
        signal.signal(signal.SIGTERM, raise_terminated)
        # A closed terminal or a dropped ssh session: before, SIGHUP killed the driver on
        # the spot (exit 129, no report, Ray's agents left running). nohup's SIG_IGN stays.
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
            signal.signal(signal.SIGHUP, raise_terminated)
    try:
        return command(*args, **kwargs)
    except HeadraceError as exc:
        click.echo(f"headrace: error: {exc}", err=True)
        detail = getattr(exc, "detail", "")
        if detail:
            click.echo("  " + detail.rstrip().replace("\n", "\n  "), err=True)
        if exc.exit_code == EXIT_FAILED and publishes:
            click.echo("headrace: nothing was published; the previous partition is unchanged", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        # After a hangup the terminal may be gone: a message that cannot be written is no reason
        # to leave with another code.
        with contextlib.suppress(OSError):
            click.echo(f"headrace: {_stopped(exc)}{'; nothing was published' if publishes else ''}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last line of defence prints and exits 1
        if verbose:
            traceback.print_exc()
        message = str(exc).strip().splitlines()
        click.echo(f"headrace: failed: {type(exc).__name__}: {message[-1] if message else ''}", err=True)
        if publishes:
            click.echo("headrace: nothing was published; the previous partition is unchanged", err=True)
        sys.exit(EXIT_FAILED)


def _stopped(exc: KeyboardInterrupt) -> str:
    """How a run was stopped, in words: `terminated (SIGTERM)`, `terminated (SIGHUP)`, `interrupted`."""
    return f"terminated ({exc.signal_name})" if isinstance(exc, Terminated) else "interrupted"


def _say(text: str) -> None:
    """Print what a run did, after it did it. A reader that went away (`| head -1`, a log
    shipper that died) is no failure of the run: before, a committed run then said
    `failed: BrokenPipeError ... nothing was published` and exit 1."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # What Python's documentation advises: send the rest of the output nowhere, so
        # that the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _logging(verbose: bool) -> None:
    logging.basicConfig(format="headrace: %(message)s", stream=sys.stderr)
    logging.getLogger("headrace").setLevel(logging.INFO if verbose else logging.WARNING)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    """`headrace --version`: headrace's version, then Python's and the libraries' that make
    rows (what a run's manifest records as `software`; for a bug report)."""
    if not value or ctx.resilient_parsing:
        return
    from headrace.fingerprint import software

    versions = software()
    click.echo(f"headrace {versions.pop('headrace')}")
    for name, version in versions.items():
        click.echo(f"  {name} {version}")
    ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print headrace's version and those of the libraries it runs on, and exit.")
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
    # Before anything here reads a bucket: a dry run's listing, a backfill's --skip-committed
    # check, a failed run's report page (before, those read it without the options and
    # said NoCredentialsError while the run itself would have worked).
    conf_mod.use_storage_options(run_conf.engine.storage_options)
    return factory, run_conf, factory.build(**run_conf.settings)


def _code_files(factory) -> list[str]:
    """The pipeline's file and the helper modules next to it, for the fingerprint."""
    return factory.code_files


@main.command()
@click.argument("pipeline")
@click.option("--master", "--address", default=None,
              help="local | local[N] | auto | HOST:PORT (a Ray head); with --deploy-mode cluster: http://HEAD:8265")
@click.option("--deploy-mode", type=click.Choice(["client", "cluster"]), default="client", show_default=True,
              help="client: run here; cluster: submit the run as a Ray job and follow it.")
@click.option("--no-wait", is_flag=True, help="With --deploy-mode cluster: print the submission id and return.")
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
def submit(pipeline, master, deploy_mode, no_wait, conf_pairs, properties_file, ds, name, num_cpus, num_gpus,
           require_gpu, resume, dry_run, verbose, report, pipeline_args):
    """Run PIPELINE (path/to/pipeline.py or package.module:attr) for one logical date."""
    _logging(verbose)
    flags = dict(master=master, name=name, num_cpus=num_cpus, num_gpus=num_gpus, require_gpu=require_gpu,
                 resume=resume, verbose=verbose or None)
    if deploy_mode != "cluster":  # where --report is refused, that says so
        from headrace.report import check_report_path

        check_report_path(report)
    if deploy_mode == "cluster":
        return _submit_job(pipeline, master, no_wait, conf_pairs, properties_file, ds, flags, dry_run, report,
                           pipeline_args)
    if no_wait:
        raise ConfigError("--no-wait goes with --deploy-mode cluster (a client-mode run is this process)")
    from headrace.runner import recordable_config

    known = {"pipeline": pipeline, "ds": ds}
    try:
        factory, run_conf, built = _resolve(pipeline, conf_pairs, properties_file, flags, ds, pipeline_args)
        known.update(pipeline=built.name, ds=run_conf.ds, config=recordable_config(run_conf.as_dict()),
                     output=built.sink.url)
        if dry_run or verbose:
            click.echo("settings (value, origin):", err=not dry_run)
            click.echo("\n".join(conf_mod.describe_settings(run_conf, ds is not None)), err=not dry_run)
        if dry_run:
            _dry_run(built, run_conf, report, known)
            return
        _run_one(built, run_conf, report, _code_files(factory))
    except BaseException as exc:
        from headrace.report import failure_report, write_report

        document = failure_report(exc, known)
        if report:
            write_report(report, document)
        if document["status"] in ("failed", "refused", "interrupted") and known.get("output"):
            _html_report(document)
        raise


def _html_report(document: dict) -> str | None:
    """The run's HTML page under OUT/_reports; a report that cannot be written is a
    warning, never a different outcome of the run."""
    from headrace import html_report

    try:
        return html_report.write(document["output"], document)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("headrace").warning("the HTML run report was not written: %s: %s", type(exc).__name__, exc)
        return None


def _dry_run(built, run_conf, report, known):
    """Everything a run checks before work starts: settings, the master, the input."""
    from headrace.placement import Master, check_local_gpus, use_ray_token_if_available

    master = Master.parse(run_conf.engine.master)
    check_local_gpus(built, master, run_conf.engine.num_gpus, run_conf.engine.require_gpu, run_conf.engine.num_cpus)
    if master.kind == "cluster":
        use_ray_token_if_available()
        from headrace import ray_adapter

        ray_adapter.check_master(master.address)
    from headrace.runner import list_inputs

    listed = list_inputs(built, run_conf.engine)  # its warnings are logged
    built.sink.check(run_conf.ds, built.output_schema)
    click.echo(built.explain())
    ignored = f", {listed.ignored['files']:,} ignored (see the warning)" if listed.ignored else ""
    click.echo(f"dry run: ds={run_conf.ds}, master {run_conf.engine.master} answers, "
               f"{listed.records.num_rows:,} input files{ignored}; nothing was executed")
    if report:
        from headrace.report import write_report

        write_report(report, {**known, "status": "dry_run", "exit_code": 0, "inputs": listed.records.num_rows,
                              "ignored_inputs": listed.ignored, "warnings": listed.warnings})


def _submit_job(pipeline, master, no_wait, conf_pairs, properties_file, ds, flags, dry_run, report, pipeline_args):
    """--deploy-mode cluster: check everything here, then run as a Ray job (headrace.jobs)."""
    from headrace import jobs

    jobs.check_dashboard(master)
    for flag, value in (("--report", report), ("--num-cpus", flags["num_cpus"]), ("--num-gpus", flags["num_gpus"])):
        if value is not None:
            raise ConfigError(
                f"{flag} does not go with --deploy-mode cluster"
                + ("; the run's manifest is its partition's _SUCCESS" if flag == "--report" else "")
            )
    factory, run_conf, built = _resolve(pipeline, conf_pairs, properties_file, flags, ds, pipeline_args)
    spec = jobs.job_spec(pipeline, run_conf, flags)
    client = jobs.Jobs(master)
    if dry_run:
        click.echo(built.explain())
        click.echo(f"dry run: would submit to {client.address}: {spec.entrypoint}")
        click.echo(f"  working directory: {spec.runtime_env.get('working_dir', '(none: installed pipeline)')}")
        return
    submission = client.submit(spec, run_conf.engine.name or built.name)
    click.echo(f"headrace: submitted {submission} to {client.address}", err=True)
    if no_wait:
        click.echo(submission)
        return
    try:
        code = client.follow(submission)
    except KeyboardInterrupt:
        # The job belongs to this command: stopped with it, as a scheduler that stops the task
        # expects (a job left running would hold the date's lock against the task's retry).
        # To leave a job running, submit it with --no-wait.
        stopping = client.stop(submission)
        click.echo(f"headrace: job {submission} {'stopped' if stopping else 'had already ended'} on the cluster",
                   err=True)
        raise
    sys.exit(code)


def _run_one(built, run_conf, report, code_files=()):
    from headrace.report import summary, write_report
    from headrace.runner import run

    started = time.perf_counter()
    result = run(built, run_conf.ds, run_conf.engine, run_conf.as_dict(), code_files)
    _say(summary(result.manifest, time.perf_counter() - started))
    page = _html_report({**result.manifest, "exit_code": 0})
    if page:
        _say(f"  report       {page}")
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
@click.option("--master", "--address", default=None, help="As for submit; one Ray serves every date.")
@_with(_conf_options)
@click.option("--name", help="Job name shown in the summaries and manifests.")
@click.option("--num-cpus", type=int, help="Logical CPUs for a local Ray.")
@click.option("--num-gpus", type=int, help="GPUs for a local Ray.")
@click.option("--require-gpu", is_flag=True, default=None, help="Fail (exit 2) instead of falling back to CPU.")
@click.option("--resume/--no-resume", default=None, help="As for submit (default: on).")
@click.option("--skip-committed", is_flag=True,
              help="Skip dates already committed by a run of the same configuration (same fingerprint).")
@click.option("--fail-fast", is_flag=True, help="Stop at the first date that does not commit.")
@click.option("--dry-run", is_flag=True, help="Check the settings and list every date's input; run nothing.")
@click.option("--verbose", "-v", is_flag=True)
@click.option("--report", type=click.Path(), help="Write the per-date results as JSON here.")
@_exits
def backfill(pipeline, start, end, master, conf_pairs, properties_file, name, num_cpus, num_gpus, require_gpu,
             resume, skip_committed, fail_fast, dry_run, verbose, report):
    """Run PIPELINE once per logical date from --start to --end, oldest first, and go on
    past a date that fails (unless --fail-fast). Exit 0 only when every date committed."""
    _logging(verbose)
    from headrace.report import check_report_path

    check_report_path(report)
    first, last = conf_mod.parse_ds(start), conf_mod.parse_ds(end)
    days = []
    day = dt.date.fromisoformat(first)
    while day <= dt.date.fromisoformat(last):
        days.append(day.isoformat())
        day += dt.timedelta(days=1)
    if not days:
        raise ConfigError(f"--start {first} is after --end {last}")
    flags = dict(master=master, name=name, num_cpus=num_cpus, num_gpus=num_gpus, require_gpu=require_gpu,
                 resume=resume, verbose=verbose or None)
    # Every date's configuration is checked before the first one runs.
    planned = [_resolve(pipeline, conf_pairs, properties_file, flags, d) for d in days]
    results = []
    interrupted = None
    for factory, run_conf, built in planned:
        started = time.perf_counter()
        try:
            results.append(_backfill_one(factory, run_conf, built, skip_committed, dry_run))
        except KeyboardInterrupt as exc:  # Ctrl-C or a scheduler's SIGTERM: the dates so far still count
            interrupted = exc
            results.append({"ds": run_conf.ds, "exit": EXIT_INTERRUPTED, "status": _stopped(exc), "rows": None,
                            "quarantined": None, "seconds": round(time.perf_counter() - started, 1),
                            "reason": "not published"})
            break
        if fail_fast and results[-1]["exit"] not in (0, None):
            break
        if results[-1]["status"] == BROKEN:  # a bug, not a bad date: every later date would hit it too
            break
    _say(_backfill_table(results, len(days)))
    code = EXIT_INTERRUPTED if interrupted else _backfill_exit(results, len(days))
    if report:
        from headrace.report import write_report

        write_report(report, {"pipeline": planned[0][2].name, "start": first, "end": last, "exit_code": code,
                              "dry_run": dry_run, "dates": results})
    if interrupted:
        click.echo(f"headrace: {results[-1]['status']}; ds={results[-1]['ds']} was not published "
                   "(the dates before it: see the table)", err=True)
    sys.exit(code)


def _backfill_one(factory, run_conf, built, skip_committed, dry_run) -> dict:
    """One date of a backfill: its outcome as a row of the final table."""
    from headrace.report import summary
    from headrace.runner import committed_as_configured, list_inputs, run

    row = {"ds": run_conf.ds, "exit": None, "status": "", "rows": None, "quarantined": None, "seconds": 0.0,
           "reason": None}
    started = time.perf_counter()
    try:
        if skip_committed and committed_as_configured(built, run_conf.ds, run_conf.as_dict(), _code_files(factory)):
            row.update(status="skipped (committed, same configuration)", exit=0)
        elif dry_run:
            listed = list_inputs(built, run_conf.engine)
            built.sink.check(run_conf.ds, built.output_schema)
            ignored = f" ({listed.ignored['files']:,} ignored)" if listed.ignored else ""
            row.update(status=f"would run: {listed.records.num_rows:,} input files{ignored}", exit=0)
        else:
            manifest = run(built, run_conf.ds, run_conf.engine, run_conf.as_dict(), _code_files(factory)).manifest
            _say(summary(manifest, time.perf_counter() - started))
            _html_report({**manifest, "exit_code": 0})
            row.update(status="committed", exit=0, rows=manifest["counts"]["output"],
                       quarantined=manifest["counts"]["quarantined"], run_id=manifest["run_id"])
    except HeadraceError as exc:
        click.echo(f"headrace: ds={run_conf.ds}: error: {exc}", err=True)
        counts = (getattr(exc, "manifest", None) or {}).get("counts") or {}
        status = BROKEN if isinstance(exc, StageBroken) else {2: "invalid", 3: "refused"}.get(exc.exit_code, "failed")
        row.update(exit=exc.exit_code, status=status,
                   reason=str(exc).splitlines()[0], rows=counts.get("output"), quarantined=counts.get("quarantined"))
    except Exception as exc:  # noqa: BLE001 - one date's crash is that date's failure
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
        click.echo(f"headrace: ds={run_conf.ds}: failed: {reason}", err=True)
        row.update(exit=1, status="failed", reason=reason)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _backfill_table(results: list[dict], planned: int) -> str:
    def show(value):
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    lines = [f"headrace: backfill of {planned} date(s)",
             f"  {'ds':<10}  {'exit':>4}  {'rows':>10}  {'quarantined':>11}  {'time s':>7}  status"]
    for r in results:
        lines.append(f"  {r['ds']:<10}  {show(r['exit']):>4}  {show(r['rows']):>10}  {show(r['quarantined']):>11}  "
                     f"{r['seconds']:>7.1f}  {r['status']}" + (f": {r['reason']}" if r["reason"] else ""))
    if len(results) < planned:
        last = results[-1] if results else {}
        why = (last["status"] if last.get("exit") == EXIT_INTERRUPTED
               else "a broken stage stops a backfill; fix it and run the backfill again" if last.get("status") == BROKEN
               else "--fail-fast")
        lines.append(f"  (stopped after {len(results)} of {planned} dates: {why})")
    return "\n".join(lines)


def _backfill_exit(results: list[dict], planned: int) -> int:
    """0 when every date committed (or was skipped as committed); else 1, or 3 where every
    date that did not commit was refused by the quality gate, or 2 where each was invalid."""
    failed = {r["exit"] for r in results if r["exit"] != 0}
    if not failed and len(results) == planned:
        return EXIT_OK
    if failed == {EXIT_QUALITY}:
        return EXIT_QUALITY
    if failed == {EXIT_USAGE}:
        return EXIT_USAGE
    return EXIT_FAILED


def _reader_settings(output, conf_pairs, properties_file) -> None:
    """A command that reads an output (status, report) reads a bucket as the run wrote it:
    ``headrace.storage_options`` from the run's properties file, ``HEADRACE_STORAGE_OPTIONS``
    or ``--conf``, besides the libraries' own environment. An output no run could have
    written (an unknown protocol, an empty one) is exit 2: a sensor's typo is not "not
    committed yet", on which a sensor waits for ever."""
    from headrace.storage import output_url

    output_url(output)
    engine = conf_mod.resolve_engine(properties_file=properties_file, conf=conf_mod.parse_pairs(list(conf_pairs)))
    conf_mod.use_storage_options(engine.storage_options)


@main.command()
@click.argument("output")
@click.option("--ds", required=True, help="The logical date, YYYY-MM-DD.")
@_with(_conf_options)
@_exits
def status(output, ds, conf_pairs, properties_file):
    """Exit 0 when OUTPUT's partition for --ds is committed (and print its summary), 1 when
    not: a sensor for downstream jobs. Buckets take credentials and endpoints as any run
    (the environment, or headrace.storage_options from --conf or the run's properties file)."""
    from headrace.committed import partition_status

    day = conf_mod.parse_ds(ds)
    _reader_settings(output, conf_pairs, properties_file)
    committed, line = partition_status(output, day)
    click.echo(line)
    sys.exit(EXIT_OK if committed else EXIT_FAILED)


@main.command()
@click.argument("output")
@click.option("--ds", required=True, help="The logical date, YYYY-MM-DD.")
@_with(_conf_options)
@_exits
def report(output, ds, conf_pairs, properties_file):
    """Write the HTML report of the latest run of OUTPUT for --ds again, and print its path
    (buckets: as for status)."""
    from headrace import html_report

    _reader_settings(output, conf_pairs, properties_file)
    page = html_report.rewrite(output, conf_mod.parse_ds(ds))
    if page is None:
        click.echo(f"headrace: no run report for {output} ds={ds} (in {output}/_reports/ds={ds}/)", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(page)


@main.group()
def job() -> None:
    """Follow runs submitted with --deploy-mode cluster (Ray jobs)."""


_job_options = [
    click.argument("submission_id"),
    click.option("--master", "--address", required=True, help="The Ray dashboard, http://head:8265."),
]


@job.command("status")
@_with(_job_options)
@_exits
def job_status(submission_id, master):
    """Print the job's status, and the run's exit code once it ended."""
    from headrace.jobs import Jobs

    info = Jobs(master).info(submission_id)
    code = f" (exit {info.driver_exit_code})" if info.driver_exit_code is not None else ""
    click.echo(f"{submission_id} {info.status}{code}")


@job.command("logs")
@_with(_job_options)
@click.option("--follow", "-f", is_flag=True, help="Stream until the job ends, then exit with the run's exit code.")
@_exits
def job_logs(submission_id, master, follow):
    """Print the job's logs."""
    from headrace.jobs import Jobs

    jobs = Jobs(master)
    if follow:
        jobs.info(submission_id)
        sys.exit(jobs.follow(submission_id))
    click.echo(jobs.logs(submission_id), nl=False)


@job.command("stop")
@_with(_job_options)
@_exits
def job_stop(submission_id, master):
    """Ask the cluster to stop the job (the run is killed; nothing is published)."""
    from headrace.jobs import Jobs

    stopped = Jobs(master).stop(submission_id)
    click.echo(f"{submission_id} {'stopping' if stopped else 'had already ended'}")


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
        code = _command_code()
    except KeyboardInterrupt:  # one that came after the command had handled its own (Ctrl-C again)
        code = EXIT_INTERRUPTED
    # The command has ended: what is left stops Ray and leaves. Ctrl-C pressed again and
    # again (or another SIGTERM) broke that off before, and the process left with exit 1
    # and Ray's processes behind it; now they wait, and a watchdog leaves with the
    # command's code should Ray's shutdown hang.
    while True:
        try:
            for name in ("SIGINT", *STOP_SIGNALS):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
            break
        except KeyboardInterrupt:
            code = code or EXIT_INTERRUPTED
    watchdog = threading.Timer(SHUTDOWN_WATCHDOG_S, _leave_now, (code,))
    watchdog.daemon = True
    watchdog.start()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            from headrace import ray_adapter

            ray_adapter.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


SHUTDOWN_WATCHDOG_S = 30.0


def _leave_now(code: int) -> None:
    """Ray's shutdown hung: its processes are killed and the command's code stands."""
    from headrace import ray_adapter

    ray_adapter.kill_local_ray()
    os._exit(code)


def _command_code() -> int:
    """The command's exit code, from click's outcome."""
    try:
        code = main.main(standalone_mode=False)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        with contextlib.suppress(OSError):
            click.echo("headrace: interrupted", err=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    entry()
