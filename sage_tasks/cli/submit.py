"""``sage-submit``: validate, plan and submit a ticket graph; follow and inspect runs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sage_tasks.cli import liveness_view
from sage_tasks.cli.common import ParallelType, handle_errors
from sage_tasks.cli.local import local_fleet
from sage_tasks.cli.submission import Submission, resolve, send
from sage_tasks.config import Settings, load_settings
from sage_tasks.core.index import DEFAULT_INDEX_PATH
from sage_tasks.store.broker import connect
from sage_tasks.store.runstate import RunStore
from sage_tasks.views.follow import follow, render_summary
from sage_tasks.views.plan_view import render_plan
from sage_tasks.views.report import write_report
from sage_tasks.views.status_view import show_status


def _consoles(as_json: bool) -> tuple[Console, Console]:
    """(human output, machine output): with --json the person reads stderr."""
    out = Console(highlight=False, soft_wrap=True)
    human = Console(stderr=True, highlight=False, soft_wrap=True) if as_json else out
    return human, out


def wait_for(
    sub_settings: Settings,
    run_id: str,
    *,
    human: Console,
    out: Console,
    as_json: bool,
    on_poll: Callable[[], None] | None = None,
    watch: bool = True,
) -> int:
    """Follow a run to its end, print the summary; returns the exit code.

    ``watch``: warn while no worker consumes the run's queues. Ctrl-C asks
    whether to cancel the run or only stop watching it (exit 130).
    """

    def store() -> RunStore:
        return RunStore(connect(sub_settings.backend_url), ttl=sub_settings.result_expires)

    watcher = liveness_view.ConsumerWatch(
        sub_settings, human, commit_queue=sub_settings.commit_queue
    )
    try:
        with watcher.running() if watch else contextlib.nullcontext():
            summary = follow(store, run_id, console=human, on_poll=on_poll)
    except KeyboardInterrupt:
        if not liveness_view.ask_cancel(human, run_id):
            human.print(
                f"stopped watching run {run_id}; it goes on "
                f"(sage-submit status {run_id}; sage-submit cancel {run_id})",
                highlight=False,
            )
            return 130
        liveness_view.cancel_run(store(), run_id, sub_settings, human)
        summary = follow(store, run_id, console=human, on_poll=on_poll)
    render_summary(summary, human)
    if as_json:
        out.print_json(json.dumps(summary.to_json()))
    return summary.exit_code()


def _run_local(sub: Submission, *, human: Console, out: Console, as_json: bool) -> int:
    """``--local``: the submission on a private Redis and workers of this machine."""
    concurrency = sub.plan.parallel or os.cpu_count() or 1
    render_plan(sub.plan, human, title=f"{sub.repo} → {sub.branch} (local)")
    with local_fleet(sub.repo, concurrency, sub.settings, human) as (fleet, settings):
        sub.settings = settings
        send(sub)
        human.print(
            f"submitted run [bold]{sub.run_id}[/] → branch {sub.branch} "
            f"(local: {concurrency} ticket slots)",
            highlight=False,
        )
        return wait_for(
            settings,
            sub.run_id,
            human=human,
            out=out,
            as_json=as_json,
            on_poll=fleet.check,
            watch=False,
        )


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--repo", default=".", show_default=True, help="The repository (path).")
@click.option("--repo-url", help="URL ticket workers fetch the repository from (default: --repo).")
@click.option("--index", help=f"Ticket index path inside the repository [{DEFAULT_INDEX_PATH}].")
@click.option(
    "--branch", help="Target branch (default sage/run-<run_id>); the same branch resumes."
)
@click.option("--base", help="Commit the branch starts from (default: the repository's HEAD).")
@click.option("--parallel", type=ParallelType(), help="At most N tickets per batch, or 'auto'.")
@click.option("--executor", help="Command for tickets without 'run' (env SAGE_EXECUTOR).")
@click.option("--retry-deferred", is_flag=True, help="Run DEFERRED tickets again.")
@click.option("--allow-main", is_flag=True, help="Allow writing to main or master.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; submit nothing.")
@click.option("--wait", is_flag=True, help="Follow the run with a progress display until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option(
    "--local",
    is_flag=True,
    help="Start a private Redis and workers on this machine, run, stop them.",
)
@click.option(
    "--schedule",
    type=click.Choice(["levels", "eager"]),
    default="levels",
    show_default=True,
    help="One chord per batch, or each ticket as soon as it can.",
)
@click.option(
    "--conflict-retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Run a ticket whose patch conflicts again on the new head, up to N times.",
)
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@click.option("--commit-queue", help="The repository's commit queue (env SAGE_COMMIT_QUEUE).")
@click.pass_context
@handle_errors
def cli(
    ctx: click.Context,
    repo: str,
    repo_url: str | None,
    index: str | None,
    branch: str | None,
    base: str | None,
    parallel: Any,
    executor: str | None,
    retry_deferred: bool,
    allow_main: bool,
    dry_run: bool,
    wait: bool,
    as_json: bool,
    local: bool,
    schedule: str,
    conflict_retries: int,
    broker: str | None,
    commit_queue: str | None,
) -> None:
    """Validate a repository's ticket graph, plan it into batches and run it on Celery."""
    ctx.ensure_object(dict)
    ctx.obj["broker"] = broker
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(broker_url=broker, commit_queue=commit_queue, executor=executor)
    human, out = _consoles(as_json)
    sub = resolve(
        settings=settings,
        repo=repo,
        repo_url=repo_url,
        index=index,
        branch=branch,
        base=base,
        parallel=parallel,
        retry_deferred=retry_deferred,
        allow_main=allow_main,
        human=human,
        estimate=dry_run,
    )
    sub.schedule = schedule
    sub.conflict_retries = conflict_retries

    if dry_run:
        if as_json:
            out.print_json(json.dumps(sub.plan.to_json()))
        else:
            render_plan(sub.plan, human, title=f"{sub.repo} → {sub.branch} (dry run)")
        return
    if local:
        sys.exit(_run_local(sub, human=human, out=out, as_json=as_json))
    connect(settings.backend_url)  # an unreachable broker is one line, before any output
    if not wait:
        # stdout carries only the run id (or its JSON), so RUN=$(sage-submit ...) works
        human = Console(stderr=True, highlight=False, soft_wrap=True)
    render_plan(sub.plan, human, title=f"{sub.repo} → {sub.branch}")
    send(sub)
    human.print(f"submitted run [bold]{sub.run_id}[/] → branch {sub.branch}", highlight=False)
    if not wait:
        if as_json:
            out.print_json(json.dumps({"run_id": sub.run_id, "branch": sub.branch}))
        else:
            click.echo(sub.run_id)
        return
    sys.exit(wait_for(settings, sub.run_id, human=human, out=out, as_json=as_json))


@cli.command()
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@click.pass_context
@handle_errors
def status(ctx: click.Context, run_id: str | None, as_json: bool, broker: str | None) -> None:
    """The state of a run (default: the latest, below a list of the latest runs), ticket by ticket.

    Per ticket: state, host, attempts, duration (or how long it has been
    running), reason; while the run runs and after.
    """
    settings = load_settings(broker_url=broker or ctx.obj.get("broker"))
    human, out = _consoles(as_json)
    store = RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    show_status(store, run_id, human=human, out=out, as_json=as_json)


@cli.command()
@click.argument("run_id", required=False)
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@click.pass_context
@handle_errors
def cancel(ctx: click.Context, run_id: str | None, broker: str | None) -> None:
    """Stop a run (default: the latest): nothing more is sent or committed, running commands
    are killed on every host, a commit under way finishes; the same --branch resumes it."""
    settings = load_settings(broker_url=broker or ctx.obj.get("broker"))
    human, _ = _consoles(False)
    store = RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    liveness_view.cancel_run(store, run_id, settings, human)


@cli.command()
@click.argument("run_id")
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the report.",
)
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@click.pass_context
@handle_errors
def report(ctx: click.Context, run_id: str, html_path: str, broker: str | None) -> None:
    """A self-contained HTML report of a run: timeline, critical path, graph, reasons."""
    settings = load_settings(broker_url=broker or ctx.obj.get("broker"))
    store = RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    write_report(store, run_id, Path(html_path))
    click.echo(html_path)


@cli.command()
@click.option("--repo", help="The repository to check (path).")
@click.option("--repo-url", help="URL ticket workers fetch the repository from.")
@click.option("--index", help=f"Ticket index path inside the repository [{DEFAULT_INDEX_PATH}].")
@click.option("--parallel", type=ParallelType(), help="At most N tickets per batch, or 'auto'.")
@click.option("--executor", help="Command for tickets without 'run' (env SAGE_EXECUTOR).")
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@click.option("--commit-queue", help="The repository's commit queue (env SAGE_COMMIT_QUEUE).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def check(
    ctx: click.Context,
    repo: str | None,
    repo_url: str | None,
    index: str | None,
    parallel: Any,
    executor: str | None,
    broker: str | None,
    commit_queue: str | None,
    as_json: bool,
) -> None:
    """Check the prerequisites of a run: broker, workers, repository, git, parallelism."""
    # loads Celery (to ask the workers): the other commands start without it
    from sage_tasks.cli.check import run_checks

    settings = load_settings(
        broker_url=broker or ctx.obj.get("broker"), commit_queue=commit_queue, executor=executor
    )
    human, out = _consoles(as_json)
    report = run_checks(settings, repo=repo, repo_url=repo_url, index=index, parallel=parallel)
    if as_json:
        out.print_json(
            json.dumps({"ready": report.ready, "checks": [f.to_json() for f in report.findings]})
        )
    else:
        for f in report.findings:
            mark = "[cyan]i[/]" if f.info else ("[green]ok[/]" if f.ok else "[red]FAIL[/]")
            if f.warning:
                mark = "[yellow]warn[/]"
            human.print(f"{mark:>4}  {f.what}: ", end="", highlight=False)
            human.print(f.detail, markup=False, highlight=False)
        human.print("ready" if report.ready else "[red]not ready[/]", highlight=False)
    sys.exit(0 if report.ready else 3)


def main() -> None:
    """Entry point of ``sage-submit``."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="sage-submit")


if __name__ == "__main__":
    main()
