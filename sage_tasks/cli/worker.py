"""``sage-worker``: start a ticket worker, a repository's commit worker, or Flower.

A worker's start is on the way of every ``--local`` run, which starts two
while it reads the index: each command loads only what it uses (Flower's
none of Celery), and a worker is started by Celery's own ``worker`` command
alone, the options parsed as ``celery worker`` parses them, without Celery's
whole command line and the plugins it loads (Flower's, a shell), which a
worker never uses.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sage_tasks.cli.common import error, handle_errors
from sage_tasks.errors import ConfigError, SageError

if TYPE_CHECKING:
    from celery import Celery


def _run_worker(app: Celery, *, queue: str, concurrency: int, hostname: str, loglevel: str) -> None:
    """Run a prefork Celery worker on ``queue`` and exit with its exit code (systemd
    restarts on failure).

    Started the way Celery's ``worker`` command starts one (``app.Worker``),
    without loading Celery's command line: its option parsing, and the
    plugins it loads with it (Flower's, a shell), are a good part of a
    worker's start and nothing a worker uses.
    """
    from celery.utils.nodenames import default_nodename, host_format

    # what is loaded by now lives as long as the worker: set apart from the collector,
    # it is not walked again by the collection Celery runs before forking each pool
    # process, and the pages that hold it stay shared with them
    gc.freeze()
    worker = app.Worker(
        hostname=host_format(default_nodename(hostname)),
        pool_cls="prefork",
        loglevel=loglevel,
        queues=[queue],
        concurrency=concurrency,
        without_gossip=True,
        without_mingle=True,
        task_events=True,
        optimization="fair",
        no_color=bool(os.environ.get("NO_COLOR")),
    )
    worker.start()
    sys.exit(worker.exitcode or 0)


def _log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--loglevel``: a level Celery knows (by name, any case)."""
    from kombu.log import LOG_LEVELS

    if value.upper() not in LOG_LEVELS:
        raise click.BadParameter(f"{value!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    return value.upper()


_LOGLEVEL = click.option(
    "--loglevel", default="INFO", show_default=True, callback=_log_level, help="Logging level."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Start the processes of a sage-tasks fleet."""


@cli.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Ticket slots [cores].")
@click.option(
    "--hostname",
    default="tickets@%h",
    show_default=True,
    help="Node name (shown as the ticket's host).",
)
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@_LOGLEVEL
@handle_errors
def tickets(concurrency: int | None, hostname: str, broker: str | None, loglevel: str) -> None:
    """A ticket worker: runs tickets in fresh worktrees and turns their changes into patches."""
    from sage_tasks.app.celery_app import make_app
    from sage_tasks.config import load_settings
    from sage_tasks.gitops import prune_workdir
    from sage_tasks.work.runtime import app_runtime

    settings = load_settings(broker_url=broker)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    prune_workdir(settings.workdir, keep_idle=settings.keep_worktrees)
    app = make_app(settings)
    app_runtime(app)
    n = concurrency or os.cpu_count() or 1
    _run_worker(
        app, queue=settings.ticket_queue, concurrency=n, hostname=hostname, loglevel=loglevel
    )


@cli.command()
@click.option("--repo", required=True, help="The repository this worker commits to (path).")
@click.option(
    "--repo-url",
    "repo_urls",
    multiple=True,
    help="Another name (URL) submitters use for this repository; repeatable.",
)
@click.option("--commit-queue", help="The repository's commit queue (env SAGE_COMMIT_QUEUE).")
@click.option("--hostname", default="commit@%h", show_default=True, help="Node name.")
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@_LOGLEVEL
@handle_errors
def commit(
    repo: str,
    repo_urls: tuple[str, ...],
    commit_queue: str | None,
    hostname: str,
    broker: str | None,
    loglevel: str,
) -> None:
    """The commit worker of one repository (always one slot), with the run supervisor."""
    from sage_tasks.app.celery_app import make_app
    from sage_tasks.config import load_settings
    from sage_tasks.dispatch import supervisor
    from sage_tasks.gitops import repo_root
    from sage_tasks.work.runtime import app_runtime

    settings = load_settings(broker_url=broker, commit_queue=commit_queue)
    root = repo_root(Path(repo))
    app = make_app(settings)
    rt = app_runtime(app)
    rt.serve(root, repo_urls)
    supervisor.install(app, rt)
    _run_worker(
        app, queue=settings.commit_queue, concurrency=1, hostname=hostname, loglevel=loglevel
    )


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--no-auth", is_flag=True, help="Start without credentials (not recommended).")
@click.option("--broker", help="Broker URL (env SAGE_BROKER_URL).")
@handle_errors
def flower(port: int, address: str, no_auth: bool, broker: str | None) -> None:
    """Flower for the configured broker, behind basic auth (FLOWER_BASIC_AUTH=user:password)."""
    from sage_tasks.app.celery_app import verified_url
    from sage_tasks.config import load_settings
    from sage_tasks.core.urls import redact_url

    settings = load_settings(broker_url=broker)
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not auth and not no_auth:
        raise ConfigError("FLOWER_BASIC_AUTH=user:password is not set (or pass --no-auth)")
    if auth and not all(_credential_ok(entry) for entry in auth.split(",")):
        raise ConfigError(
            "FLOWER_BASIC_AUTH must be user:password (or several, comma-separated), "
            "each with a user and a password"
        )
    celery_bin = _celery_script()
    argv = [celery_bin, "flower", f"--port={port}", f"--address={address}"]
    # secrets travel in the environment, never on a command line others can read in ps
    env = dict(os.environ)
    # Flower's app reads only these: a rediss:// URL must check certificates as workers do
    env["CELERY_BROKER_URL"] = verified_url(settings.broker_url)
    env["CELERY_RESULT_BACKEND"] = verified_url(settings.backend_url)
    if not auth:
        env.pop("FLOWER_BASIC_AUTH", None)
    click.echo(
        f"starting Flower on {address}:{port} for {redact_url(settings.broker_url)}", err=True
    )
    try:
        os.execve(celery_bin, argv, env)
    except OSError as exc:
        error(f"cannot start Flower: {exc}")
        sys.exit(3)


def _celery_script() -> str:
    """Celery's script: beside this interpreter (a venv), else on ``PATH``.

    The two live apart under a system Python (Debian's ``/usr/bin/python3`` with
    scripts in ``/usr/local/bin``), ``pip install --user`` and some pipx setups.
    """
    found = shutil.which("celery", path=str(Path(sys.executable).parent)) or shutil.which("celery")
    if found is None:
        raise SageError(  # an installation problem, not bad input: exit 3
            f"cannot start Flower: no 'celery' script beside {sys.executable} or on PATH"
        )
    return found


def _credential_ok(entry: str) -> bool:
    user, sep, password = entry.partition(":")
    return bool(sep and user.strip() and password)


def main() -> None:
    """Entry point of ``sage-worker``."""
    cli(prog_name="sage-worker")


if __name__ == "__main__":
    main()
