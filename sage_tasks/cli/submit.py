"""``sage-submit``: validate, plan and submit a ticket graph; follow and inspect runs."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from sage_tasks.cli.common import ParallelType, handle_errors, keep_until_exit, run_program
from sage_tasks.cli.submission import SourceReader, Submission, resolve, send
from sage_tasks.core.index import DEFAULT_INDEX_PATH
from sage_tasks.errors import BrokerUnavailable, ConfigError, UnknownRun
from sage_tasks.model.run import Schedule
from sage_tasks.views.output import write_json
from sage_tasks.views.plan_view import render_plan

if TYPE_CHECKING:
    from sage_tasks.config import Settings
    from sage_tasks.store.runstate import RunStore

# What talks to the broker (redis-py, the run store, the views of a run, --local's
# fleet) is imported by the commands that use it: a dry run loads none of it.

#: how often ``--local`` looks at its run once every ticket left is under way (seconds)
LOCAL_LAST_WAVE_POLL_S = 0.05


def load_settings(**overrides: Any) -> Settings:
    """The settings; pydantic-settings is imported here, while git reads the index."""
    from sage_tasks import config

    return config.load_settings(**overrides)


def _consoles(as_json: bool) -> tuple[Console, Console]:
    """(human output, machine output): with --json the person reads stderr."""
    out = Console(highlight=False, soft_wrap=True)
    human = Console(stderr=True, highlight=False, soft_wrap=True) if as_json else out
    return human, out


def _load_followers() -> None:
    """Import what sends and follows a run before anything is sent or printed: a Ctrl-C
    once the run is under way then meets :func:`wait_for`'s handler, not an import."""
    import sage_tasks.cli.liveness_view
    import sage_tasks.cli.local
    import sage_tasks.store.broker
    import sage_tasks.views.follow
    import sage_tasks.views.report  # noqa: F401


def wait_for(
    sub_settings: Settings,
    run_id: str,
    *,
    human: Console,
    out: Console,
    as_json: bool,
    on_poll: Callable[[], None] | None = None,
    report: Path | None = None,
    show_all: bool = False,
    watch: bool = True,
    detachable: bool = True,
    last_wave_poll_s: float | None = None,
) -> int:
    """Follow a run to its end, print the summary (and write its report); returns the exit code.

    ``watch``: warn while no worker consumes the run's queues. Ctrl-C asks
    whether to cancel the run or only stop watching it (exit 130); a run that
    cannot go on without this process (``detachable`` False: ``--local``, whose
    workers stop with it) is not asked about: the interrupt goes on up.
    """
    from sage_tasks.cli import liveness_view
    from sage_tasks.store.broker import connect
    from sage_tasks.store.runstate import RunStore
    from sage_tasks.views.follow import follow, render_summary
    from sage_tasks.views.report import write_report

    def store() -> RunStore:
        return RunStore(connect(sub_settings.backend_url), ttl=sub_settings.result_expires)

    watcher = liveness_view.ConsumerWatch(
        sub_settings, human, commit_queue=sub_settings.commit_queue
    )
    try:
        with watcher.running() if watch else contextlib.nullcontext():
            summary = follow(
                store, run_id, console=human, on_poll=on_poll, last_wave_poll_s=last_wave_poll_s
            )
    except KeyboardInterrupt:
        if not detachable:
            raise
        if not liveness_view.ask_cancel(human, run_id):
            human.print(
                f"stopped watching run {run_id}; it goes on "
                f"(sage-submit status {run_id}; sage-submit cancel {run_id})",
                highlight=False,
            )
            return 130
        liveness_view.cancel_run(store(), run_id, sub_settings, human)
        summary = follow(store, run_id, console=human, on_poll=on_poll)
    render_summary(summary, human, show_all=show_all)
    if report is not None:
        write_report(store(), run_id, report)
        human.print(f"report: {report}", highlight=False)
    if as_json:
        write_json(summary.to_json())
    return summary.exit_code()


def _run_local(
    resolved: Callable[[], Submission],
    *,
    repo: str,
    parallel: Any,
    settings: Settings,
    human: Console,
    out: Console,
    as_json: bool,
    report: Path | None,
    flower: int | None,
    show_all: bool,
) -> int:
    """``--local``: the submission on the repository's private Redis and workers of this machine.

    They start first and boot while ``resolved`` reads and plans the index
    (bad input still ends with its one line and exit 2, and nothing left).
    """
    from sage_tasks import gitops
    from sage_tasks.cli.local import local_fleet, ticket_slots

    root = gitops.repo_root(Path(repo))
    slots = ticket_slots(parallel)
    early: list[Submission] = []  # resolved before waiting for another run on the repository
    with local_fleet(
        root, settings, human, slots=slots, flower=flower, on_busy=lambda: early.append(resolved())
    ) as fleet:
        sub = early[0] if early else resolved()
        render_plan(sub.plan, human, title=f"{sub.repo} → {sub.branch} (local)", show_all=show_all)
        fleet.ready()
        sub.settings = fleet.settings
        fleet.remember(sub.run_id, time.time())
        send(sub)
        human.print(
            f"submitted run [bold]{sub.run_id}[/] → branch {sub.branch} "
            f"(local: {slots} ticket slots)",
            highlight=False,
        )
        code = wait_for(
            fleet.settings,
            sub.run_id,
            human=human,
            out=out,
            as_json=as_json,
            on_poll=fleet.check,
            report=report,
            show_all=show_all,
            watch=False,
            detachable=False,
            # the workers stop once the run ends: see its end soon after it comes
            last_wave_poll_s=LOCAL_LAST_WAVE_POLL_S,
        )
        fleet.finished = code in (0, 1)  # the run FINISHED (with or without deferrals)
    me = sys.argv[0] if sys.argv[0].endswith("sage-submit") else "sage-submit"
    where = f"--local --repo {shlex.quote(str(sub.repo))}"
    human.print(
        "to see this run again:\n"
        f"  {me} status {sub.run_id} {where}\n"
        f"  {me} report {sub.run_id} --html run.html {where}",
        highlight=False,
    )
    return code


def _report_target(path: str | None) -> Path | None:
    """``--report FILE``, checked before the run: its folder must exist or be creatable."""
    if path is None:
        return None
    target = Path(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--report: cannot create {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--report: {folder} is not writable", path=str(folder))
    return target


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
@click.option("--all", "show_all", is_flag=True, help="Show every batch and ticket, however many.")
@click.option(
    "--local",
    is_flag=True,
    help="Run on this machine: the repository's private Redis (its history kept under "
    "SAGE_WORKDIR) and workers, stopped at the end.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write the run's HTML report to FILE when it ends (with --local or --wait).",
)
@click.option(
    "--flower",
    "flower_port",
    type=click.IntRange(0, 65535),
    is_flag=False,
    flag_value=0,
    default=None,
    metavar="[PORT]",
    help="With --local: Flower on 127.0.0.1 (port 5555 or a free one) for the run, "
    "its password printed once.",
)
@click.option(
    "--schedule",
    type=click.Choice([s.value for s in Schedule]),
    default=Schedule.LEVELS.value,
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
    show_all: bool,
    local: bool,
    report_path: str | None,
    flower_port: int | None,
    schedule: str,
    conflict_retries: int,
    broker: str | None,
    commit_queue: str | None,
) -> None:
    """Validate a repository's ticket graph, plan it into batches and run it on Celery."""
    ctx.ensure_object(dict)
    ctx.obj.update(broker=broker, local=local, repo=repo)
    if ctx.invoked_subcommand is not None:
        return
    if flower_port is not None and not local:
        raise ConfigError("--flower needs --local (for a fleet: sage-worker flower)")
    if report_path is not None and not (local or wait):
        raise ConfigError("--report needs --local or --wait (the report is written at the end)")
    report_to = None if dry_run else _report_target(report_path)
    # git reads the index while the settings are loaded
    reader = SourceReader(repo=repo, index=index, branch=branch, base=base, allow_main=allow_main)
    settings = load_settings(broker_url=broker, commit_queue=commit_queue, executor=executor)
    human, out = _consoles(as_json)

    def resolved() -> Submission:
        sub = resolve(
            settings=settings,
            source=reader.source(),
            repo_url=repo_url,
            parallel=parallel,
            retry_deferred=retry_deferred,
            allow_main=allow_main,
            human=human,
            estimate=dry_run,
        )
        keep_until_exit(sub)  # freed by the process's end, not one object at a time
        sub.schedule = Schedule(schedule)
        sub.conflict_retries = conflict_retries
        return sub

    if local and not dry_run:
        _load_followers()
        sys.exit(
            _run_local(
                resolved,
                repo=repo,
                parallel=parallel,
                settings=settings,
                human=human,
                out=out,
                as_json=as_json,
                report=report_to,
                flower=flower_port,
                show_all=show_all,
            )
        )
    sub = resolved()
    if dry_run:
        if as_json:
            write_json(sub.plan.to_json())
        else:
            title = f"{sub.repo} → {sub.branch} (dry run)"
            render_plan(sub.plan, human, title=title, show_all=show_all)
        return
    if wait:
        _load_followers()
    from sage_tasks.store.broker import connect

    connect(settings.backend_url)  # an unreachable broker is one line, before any output
    if not wait:
        # stdout carries only the run id (or its JSON), so RUN=$(sage-submit ...) works
        human = Console(stderr=True, highlight=False, soft_wrap=True)
    render_plan(sub.plan, human, title=f"{sub.repo} → {sub.branch}", show_all=show_all)
    send(sub)
    human.print(f"submitted run [bold]{sub.run_id}[/] → branch {sub.branch}", highlight=False)
    if not wait:
        if as_json:
            write_json({"run_id": sub.run_id, "branch": sub.branch})
        else:
            click.echo(sub.run_id)
        return
    sys.exit(
        wait_for(
            settings,
            sub.run_id,
            human=human,
            out=out,
            as_json=as_json,
            report=report_to,
            show_all=show_all,
        )
    )


@contextmanager
def _run_store(
    ctx: click.Context, *, broker: str | None, local: bool, repo: str | None, run_id: str | None
) -> Iterator[RunStore]:
    """The runs ``status`` and ``report`` read: the broker's, or (``--local``) the repository's.

    A run the broker does not know (or a broker out of reach) that is a
    ``--local`` run ends with the hint to add ``--local``, exit 2.
    """
    from sage_tasks.cli.local import local_hint, local_reader
    from sage_tasks.store.broker import connect
    from sage_tasks.store.runstate import RunStore

    settings = load_settings(broker_url=broker or ctx.obj.get("broker"))
    repo = repo or ctx.obj.get("repo")
    if local or ctx.obj.get("local"):
        # GitPython is loaded only when --local names a repository
        from sage_tasks.gitops import repo_root

        with local_reader(settings, repo_root(Path(repo or "."))) as private:
            yield RunStore(connect(private.backend_url), ttl=private.result_expires)
        return
    try:
        yield RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    except (UnknownRun, BrokerUnavailable) as exc:
        hint = local_hint(settings, run_id, repo)
        if hint is None:
            raise
        raise UnknownRun(f"{str(exc).rstrip('.')}; {hint}") from None


_LOCAL_READ = click.option(
    "--local",
    is_flag=True,
    help="Read the repository's --local runs (its private Redis, started while reading).",
)
_LOCAL_REPO = click.option("--repo", help="With --local: the repository (path) [.].")


@cli.command()
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="List every ticket, however many.")
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@_LOCAL_READ
@_LOCAL_REPO
@click.pass_context
@handle_errors
def status(
    ctx: click.Context,
    run_id: str | None,
    as_json: bool,
    show_all: bool,
    broker: str | None,
    local: bool,
    repo: str | None,
) -> None:
    """The state of a run (default: the latest, below a list of the latest runs), ticket by ticket.

    Per ticket: state, host, attempts, duration (or how long it has been
    running), reason; while the run runs and after.
    """
    from sage_tasks.views.status_view import show_status

    human, out = _consoles(as_json)
    with _run_store(ctx, broker=broker, local=local, repo=repo, run_id=run_id) as store:
        show_status(store, run_id, human=human, out=out, as_json=as_json, show_all=show_all)


@cli.command()
@click.argument("run_id", required=False)
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@_LOCAL_READ
@_LOCAL_REPO
@click.pass_context
@handle_errors
def cancel(
    ctx: click.Context, run_id: str | None, broker: str | None, local: bool, repo: str | None
) -> None:
    """Stop a run (default: the latest): nothing more is sent or committed, running commands
    are killed on every host, a commit under way finishes; the same --branch resumes it."""
    from sage_tasks.cli import liveness_view

    settings = load_settings(broker_url=broker or ctx.obj.get("broker"))
    human, _ = _consoles(False)
    with _run_store(ctx, broker=broker, local=local, repo=repo, run_id=run_id) as store:
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
@_LOCAL_READ
@_LOCAL_REPO
@click.pass_context
@handle_errors
def report(
    ctx: click.Context,
    run_id: str,
    html_path: str,
    broker: str | None,
    local: bool,
    repo: str | None,
) -> None:
    """A self-contained HTML report of a run: timeline, critical path, graph, reasons."""
    from sage_tasks.views.report import write_report

    with _run_store(ctx, broker=broker, local=local, repo=repo, run_id=run_id) as store:
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
@click.option(
    "--timeout",
    "workers_timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds to wait for the workers' answers (slow links may need more).",
)
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
    workers_timeout: float,
    as_json: bool,
) -> None:
    """Check the prerequisites of a run: broker, workers, repository, git, parallelism."""
    # loads Celery (to ask the workers): the other commands start without it
    from sage_tasks.cli.check import run_checks

    settings = load_settings(
        broker_url=broker or ctx.obj.get("broker"), commit_queue=commit_queue, executor=executor
    )
    human, _ = _consoles(as_json)
    report = run_checks(
        settings,
        repo=repo,
        repo_url=repo_url,
        index=index,
        parallel=parallel,
        timeout=workers_timeout,
    )
    if as_json:
        write_json({"ready": report.ready, "checks": [f.to_json() for f in report.findings]})
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
    run_program(cli, "sage-submit")


if __name__ == "__main__":
    main()
