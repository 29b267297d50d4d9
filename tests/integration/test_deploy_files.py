"""The deployment files and the docs say only what sage-tasks can do.

Every ``sage-submit``/``sage-worker`` command line written in the systemd
units, the compose file, the worker image, the docs and the example READMEs
names a real subcommand and real options (checked against ``--help``); every
``SAGE_*`` variable they set is a real setting; the compose file and the units
pass their tools' own checks; the Redis config starts a Redis that behaves as
a broker must.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from sage_tasks.config import Settings
from sage_tasks.work.executor import TICKET_ENV_VARS
from tests.support.procs import BIN
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
UNITS = ["sage-ticket-worker@.service", "sage-commit-worker.service", "sage-flower.service"]
PROGRAMS = {"sage-submit", "sage-worker"}
SUBCOMMANDS = {"sage-submit": {"status", "report", "check"}, "sage-worker": None}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1", ")"}
#: what tickets get from the worker, on top of the settings
TICKET_ENV = set(TICKET_ENV_VARS)
SETTINGS_ENV = {f"SAGE_{name.upper()}" for name in Settings.model_fields}


# -- finding command lines ---------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """One command line: where it is written, the program, its arguments."""

    where: str
    program: str
    args: tuple[str, ...]

    @property
    def subcommand(self) -> tuple[str, ...]:
        first = self.args[0] if self.args else ""
        allowed = SUBCOMMANDS[self.program]
        if allowed is None:  # sage-worker: the role always comes first
            return (first,) if first and not first.startswith("-") else ()
        return (first,) if first in allowed else ()

    @property
    def options(self) -> list[str]:
        found = []
        for arg in self.args:
            m = re.match(r"[\[(]*(--[a-z][a-z0-9-]*)", arg)
            if m:
                found.append(m.group(1))
        return found

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {' '.join(self.args)}"


def split_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quotes in prose
        return text.split()


def invocations_in(text: str, where: str) -> list[Invocation]:
    """Every sage-submit/sage-worker command in one logical line of text."""
    found = []
    words = split_words(text)
    for i, word in enumerate(words):
        program = word.rsplit("/", 1)[-1].strip("`")
        if program not in PROGRAMS:
            continue
        args = []
        for arg in words[i + 1 :]:
            if arg in SHELL_OPERATORS or arg.rsplit("/", 1)[-1] in PROGRAMS:
                break
            args.append(arg)
        found.append(Invocation(where, program, tuple(args)))
    return found


def logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with its first line number."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def invocations_in_markdown(path: Path) -> list[Invocation]:
    """Commands in fenced code blocks (a leading ``$ `` prompt allowed) and in inline code."""
    rel = path.relative_to(ROOT)
    found: list[Invocation] = []
    block: list[str] | None = None
    block_start = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if block is None:
                block, block_start = [], number
            else:
                for offset, text in logical_lines(block):
                    text = text.strip().removeprefix("$ ")
                    found += invocations_in(text, f"{rel}:{block_start + offset}")
                block = None
            continue
        if block is not None:
            block.append(line)
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if span.split(" ", 1)[0].rsplit("/", 1)[-1] in PROGRAMS:
                found += invocations_in(span, f"{rel}:{number}")
    return found


def invocations_in_config(path: Path) -> list[Invocation]:
    """Commands anywhere in a unit, Dockerfile or compose file, comments included."""
    rel = path.relative_to(ROOT)
    lines = [re.sub(r"^\s*#\s?", "", line) for line in path.read_text().splitlines()]
    found: list[Invocation] = []
    for number, text in logical_lines(lines):
        text = text.split("=", 1)[1] if text.startswith("ExecStart=") else text
        found += invocations_in(text, f"{rel}:{number}")
    return found


def markdown_files() -> list[Path]:
    """The docs, the example READMEs and the project README (not the seed's task list)."""
    files = sorted((ROOT / "docs").glob("**/*.md")) + sorted((ROOT / "examples").glob("**/*.md"))
    readme = ROOT / "README.md"
    seed = ROOT / "examples" / "par-001" / "tasks.md"
    return ([readme] if readme.exists() else []) + [f for f in files if f != seed]


def compose_invocations() -> list[Invocation]:
    """The compose services built from workers/ run ``sage-worker <command>``."""
    services = load_compose()["services"]
    return [
        Invocation(f"docker-compose.yml: {name}", "sage-worker", tuple(map(str, svc["command"])))
        for name, svc in services.items()
        if "build" in svc
    ]


def all_invocations() -> list[Invocation]:
    found = [inv for path in markdown_files() for inv in invocations_in_markdown(path)]
    for path in [*(DEPLOY / unit for unit in UNITS), COMPOSE, ROOT / "workers" / "Dockerfile"]:
        found += invocations_in_config(path)
    found += compose_invocations()
    cmd = re.search(r"^CMD \[(.*)\]", (ROOT / "workers/Dockerfile").read_text(), re.M)
    assert cmd, "workers/Dockerfile has no CMD"
    found.append(
        Invocation("workers/Dockerfile: CMD", "sage-worker", tuple(json.loads(f"[{cmd[1]}]")))
    )
    return found


# -- the compose file without PyYAML -----------------------------------------


def load_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


# -- command lines -----------------------------------------------------------

INVOCATIONS = all_invocations()


@functools.cache
def help_text(program: str, subcommand: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [str(BIN / program), *subcommand, "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{program} {' '.join(subcommand)} --help failed:\n{proc.stderr}"
    return proc.stdout


def test_the_files_hold_command_lines_of_every_kind() -> None:
    wheres = [inv.where for inv in INVOCATIONS]
    for unit in UNITS:
        assert any(w.startswith(f"deploy/{unit}") for w in wheres), unit
    assert any(w.startswith("docker-compose.yml: tickets") for w in wheres)
    assert any(w.startswith("docs/multi-host.md") for w in wheres)
    assert any(w.startswith("examples/") and "README" in w for w in wheres)
    roles = {inv.subcommand for inv in INVOCATIONS if inv.program == "sage-worker"}
    assert {("tickets",), ("commit",), ("flower",)} <= roles


@pytest.mark.parametrize(
    "invocation",
    [i for i in INVOCATIONS if i.program != "sage-worker" or i.subcommand],
    ids=str,
)
def test_every_written_command_line_uses_options_its_command_has(invocation: Invocation) -> None:
    text = help_text(invocation.program, invocation.subcommand)
    for option in invocation.options:
        if option == "--help":
            continue
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
            f"{invocation}: {option} is not in `{invocation.program} "
            f"{' '.join(invocation.subcommand)} --help`"
        )


def env_names_in(path: Path) -> set[str]:
    return set(re.findall(r"\bSAGE_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))


def test_every_sage_variable_the_files_name_is_a_real_setting() -> None:
    files = [*markdown_files(), *DEPLOY.iterdir(), COMPOSE, *(ROOT / "workers").iterdir()]
    for path in files:
        unknown = env_names_in(path) - SETTINGS_ENV - TICKET_ENV
        assert not unknown, f"{path.relative_to(ROOT)} names {sorted(unknown)}"


# -- docker-compose.yml ------------------------------------------------------

BROKER_IN_COMPOSE = "redis://:${REDIS_PASSWORD}@redis:6379/0"
COMPOSE_ENV = {
    "REDIS_PASSWORD": "pw",
    "FLOWER_BASIC_AUTH": "admin:pw",
    "REPO_PATH": "/srv/git/project.git",
}


def test_the_compose_file_has_redis_flower_a_commit_worker_and_scalable_ticket_workers() -> None:
    services = load_compose()["services"]
    assert set(services) == {"redis", "flower", "commit", "tickets"}
    redis_svc = services["redis"]
    assert str(redis_svc["image"]).startswith("redis:7")
    start = " ".join(map(str, redis_svc.get("entrypoint", []) + redis_svc.get("command", [])))
    for setting in ["--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"]:
        assert setting in start
    assert "requirepass" in start and "REDIS_PASSWORD" in start
    assert any(v.endswith(":/data") for v in redis_svc["volumes"])
    for name in ["flower", "commit", "tickets"]:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "workers/Dockerfile"
        assert svc["environment"]["SAGE_BROKER_URL"] == BROKER_IN_COMPOSE
    assert services["flower"]["command"][0] == "flower"
    assert "${FLOWER_BASIC_AUTH" in services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert services["commit"]["command"] == ["commit", "--repo", "/repo"]
    assert any(str(v).split(":")[-1] == "/repo" for v in services["commit"]["volumes"])
    tickets = services["tickets"]
    assert tickets["command"][0] == "tickets"
    for fixed in ["container_name", "ports", "hostname"]:
        assert fixed not in tickets, f"tickets has {fixed}: it could not be scaled"
    for svc in services.values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port} is published on every address"


def test_every_compose_service_has_a_healthcheck_and_each_worker_pings_its_own_node() -> None:
    services = load_compose()["services"]
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ["commit", "tickets"]:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "celery -A sage_tasks inspect ping" in test
        assert f'-d "{name}@$$HOSTNAME"' in test  # its own node (sage-worker's default name)
        assert "SAGE_VISIBILITY_TIMEOUT" in services[name]["environment"]


def compose_binaries() -> list[list[str]]:
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        found.append([docker, "compose"])
    return found


def test_docker_compose_accepts_the_compose_file() -> None:
    binaries = compose_binaries()
    assert binaries, "docker-compose is not installed (make install-tools installs it)"
    for binary in binaries:
        proc = subprocess.run(
            [*binary, "-f", str(COMPOSE), "config", "-q"],
            capture_output=True, text=True, env={**COMPOSE_ENV, "PATH": "/usr/bin:/bin"},
            cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def test_docker_compose_refuses_to_start_without_the_passwords() -> None:
    binaries = compose_binaries()
    assert binaries, "docker-compose is not installed (make install-tools installs it)"
    env = {"REPO_PATH": "/srv/git/project.git", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [*binaries[0], "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "REDIS_PASSWORD" in proc.stderr


# -- the worker image --------------------------------------------------------


def test_the_worker_image_installs_the_package_with_git_and_runs_as_a_user() -> None:
    text = (ROOT / "workers/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"apt-get install[^\n]*\bgit\b", text)
    assert "pip install --no-cache-dir ." in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in {"root", "0"}
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in src.split():
            if not name.endswith("*"):
                assert (ROOT / name).exists(), f"COPY {name}: no such file"
    entry_point = re.search(r"^ENTRYPOINT \[(.*)\]", text, re.M)
    assert entry_point and json.loads(f"[{entry_point[1]}]")[:2] == ["/usr/bin/tini", "--"]
    entry = (ROOT / "workers/entrypoint.sh").read_text()
    assert 'exec sage-worker "$@"' in entry
    assert subprocess.run(["sh", "-n", str(ROOT / "workers/entrypoint.sh")]).returncode == 0


# -- systemd units -----------------------------------------------------------


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def soft_shutdown_seconds() -> float:
    from sage_tasks.app.celery_app import make_app

    return float(make_app(Settings()).conf.worker_soft_shutdown_timeout or 0)


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_reads_the_env_file_restarts_on_failure_and_is_hardened(unit: str) -> None:
    s = unit_settings(unit)
    assert s["EnvironmentFile"] == ["/etc/sage-tasks/sage-tasks.env"]
    assert s["Restart"] == ["on-failure"]
    assert s["KillMode"] == ["mixed"]
    assert float(s["TimeoutStopSec"][0]) > soft_shutdown_seconds()
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectSystem", "strict"),
    ]:
        assert s[key] == [value], key
    assert s["User"] != ["root"]


def test_the_ticket_worker_template_names_each_worker_after_its_instance() -> None:
    exec_start = unit_settings("sage-ticket-worker@.service")["ExecStart"][0]
    assert re.search(r"--hostname \S*%i", exec_start)


def test_the_commit_worker_may_write_to_the_repository_it_commits_to() -> None:
    s = unit_settings("sage-commit-worker.service")
    repo = re.search(r"--repo (\S+)", s["ExecStart"][0])
    assert repo
    writable = [p.lstrip("-") for p in " ".join(s["ReadWritePaths"]).split()]
    assert any(Path(repo[1]).is_relative_to(p) for p in writable)


def test_variables_the_units_expand_are_set_by_the_unit_or_the_env_example() -> None:
    example = env_example()
    for unit in UNITS:
        s = unit_settings(unit)
        set_here = {e.split("=", 1)[0] for e in s.get("Environment", [])}
        for name in re.findall(r"\$\{(\w+)\}", s["ExecStart"][0]):
            assert name in set_here | set(example), f"{unit} expands ${{{name}}}, set nowhere"


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verifies_every_unit(tmp_path: Path, unit: str) -> None:
    # verify wants ExecStart's binary to exist: point it at this venv's
    text = (DEPLOY / unit).read_text()
    installed = re.search(r"^ExecStart=(\S+/)sage-worker ", text, re.M)
    assert installed
    (tmp_path / unit).write_text(text.replace(installed[1], f"{BIN}/"))
    name = unit.replace("@.", "@w1.")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    complaints = [line for line in proc.stderr.splitlines() if unit.split("@")[0] in line]
    assert proc.returncode == 0 and not complaints, proc.stderr


# -- Redis configuration and the environment file ----------------------------


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "sage-tasks.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def redis_conf() -> dict[str, str]:
    conf = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    return conf


def test_the_env_example_sets_the_broker_with_the_redis_password_and_flower_credentials() -> None:
    env = env_example()
    password = redis_conf()["requirepass"]
    assert env["SAGE_BROKER_URL"].startswith(f"redis://:{password}@")
    assert ":" in env["FLOWER_BASIC_AUTH"]
    assert set(env) - SETTINGS_ENV <= {"FLOWER_BASIC_AUTH", "TICKET_CONCURRENCY"}


def test_the_redis_config_never_evicts_keeps_an_aof_and_listens_privately() -> None:
    conf = redis_conf()
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["protected-mode"] == "yes"
    assert "0.0.0.0" not in conf["bind"].split() and "*" not in conf["bind"].split()


def test_redis_started_with_the_config_demands_the_password(tmp_path: Path) -> None:
    port = free_port()
    password = redis_conf()["requirepass"]
    proc = subprocess.Popen(
        ["redis-server", str(DEPLOY / "redis.conf"), "--bind", "127.0.0.1", "--port", str(port),
         "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, password=password)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                proc.poll()
                assert proc.returncode is None, (tmp_path / "redis.log").read_text()
                time.sleep(0.05)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        # a ticket's record stays in the compact encoding
        assert client.config_get("hash-max-ziplist-value") == {"hash-max-ziplist-value": "1024"}
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        proc.terminate()
        proc.wait(10)
