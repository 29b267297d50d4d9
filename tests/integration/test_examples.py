"""The examples work as their READMEs say: plans, the scripts tickets run, and whole runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import bin_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PAR001 = EXAMPLES / "par-001"
AGENT = EXAMPLES / "agent-executor" / "stand_in_agent.py"
SAGE_SUBMIT = bin_path("sage-submit")
AGENT_EXECUTOR = f"{sys.executable} {AGENT}"

PAR001_LEVELS = [
    ["TASK-001", "TASK-005", "TASK-007", "TASK-013", "TASK-021", "TASK-022", "TASK-023",
     "TASK-024", "TASK-025"],
    ["TASK-002", "TASK-008", "TASK-009", "TASK-014", "TASK-015", "TASK-019", "TASK-026",
     "TASK-027"],
    ["TASK-003", "TASK-004", "TASK-010", "TASK-028", "TASK-029"],
    ["TASK-006", "TASK-011", "TASK-012", "TASK-016"],
    ["TASK-017"],
    ["TASK-018", "TASK-020"],
]  # fmt: skip
PAGES = [f"PAGE-{n:02d}" for n in range(1, 11)]

# example, extra sage-submit arguments, expected batches, expected critical path (None: any)
PLANS = [
    pytest.param("basic", [], [["HELLO-001", "HELLO-002", "HELLO-003"]], None, id="basic"),
    pytest.param("auto", [], [PAGES, ["SITEMAP-01"]], None, id="auto"),
    pytest.param("auto", ["--parallel", "4"],
                 [PAGES[0:4], PAGES[4:8], PAGES[8:10], ["SITEMAP-01"]], None, id="auto-parallel-4"),
    pytest.param("dependencies", [],
                 [["CI-001", "DB-001"], ["API-001", "API-002"], ["UI-001", "DOCS-001"]],
                 ["DB-001", "API-001", "UI-001"], id="dependencies"),
    pytest.param("deferrals", [], [["THEME-001", "LINT-001", "THEME-002"], ["THEME-003"]], None,
                 id="deferrals"),
    pytest.param("agent-executor", ["--executor", AGENT_EXECUTOR],
                 [["NOTES-001", "CHANGELOG-001"], ["NOTES-002"]], None, id="agent-executor"),
    pytest.param("par-001", [], PAR001_LEVELS,
                 ["TASK-001", "TASK-002", "TASK-004", "TASK-016", "TASK-017", "TASK-020"],
                 id="par-001"),
]  # fmt: skip


def build_repo(example: str, dest: Path) -> Path:
    """The scratch repository an example's README tells you to build."""
    if example == "par-001":
        cmd = [sys.executable, str(PAR001 / "build_repo.py"), str(dest)]
    else:
        cmd = [sys.executable, str(EXAMPLES / "make_repo.py"), str(EXAMPLES / example), str(dest)]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


def submit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGE_SUBMIT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def load_index(path: Path) -> list[dict[str, Any]]:
    tickets: list[dict[str, Any]] = json.loads(path.read_text())["tickets"]
    return tickets


def ancestors(tickets: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Every ticket's transitive dependencies."""
    deps = {t["id"]: set(t.get("dependencies", [])) for t in tickets}
    result: dict[str, set[str]] = {}

    def visit(tid: str) -> set[str]:
        if tid not in result:
            result[tid] = set()
            for dep in deps[tid]:
                result[tid] |= {dep} | visit(dep)
        return result[tid]

    for tid in deps:
        visit(tid)
    return result


def run_script(
    script: Path, cwd: Path, ticket: dict[str, Any], tmp: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    ticket_file = tmp / f"{ticket['id']}.json"
    ticket_file.write_text(json.dumps(ticket))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env={**os.environ, "SAGE_TICKET_FILE": str(ticket_file), **env},
        capture_output=True,
        text=True,
        check=False,
    )


# -- plans -------------------------------------------------------------------


@pytest.mark.parametrize(("example", "args", "batches", "critical_path"), PLANS)
def test_every_example_plans_the_batches_its_readme_describes(
    tmp_path: Path, example: str, args: list[str], batches: list[list[str]],
    critical_path: list[str] | None,
) -> None:  # fmt: skip
    repo = build_repo(example, tmp_path / "repo")
    proc = submit("--repo", str(repo), "--dry-run", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["batches"] == batches
    assert plan["blocked"] == []
    assert plan["to_run"] == plan["tickets"] == sum(len(b) for b in batches)
    if critical_path is not None:
        assert plan["critical_path"] == critical_path


def test_parallel_auto_splits_the_wide_level_into_groups_of_the_chosen_size(
    tmp_path: Path,
) -> None:
    repo = build_repo("auto", tmp_path / "repo")
    proc = submit("--repo", str(repo), "--dry-run", "--json", "--parallel", "auto")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    n = plan["parallel"]
    assert isinstance(n, int) and 1 <= n <= 8
    groups = [PAGES[i : i + n] for i in range(0, len(PAGES), n)]
    assert plan["batches"] == [*groups, ["SITEMAP-01"]]


def test_the_agent_example_is_rejected_without_an_executor(tmp_path: Path) -> None:
    repo = build_repo("agent-executor", tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k != "SAGE_EXECUTOR"}
    proc = subprocess.run(
        [SAGE_SUBMIT, "--repo", str(repo), "--dry-run", "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "NOTES-001" in proc.stderr


# -- the PAR-001 index against its source ------------------------------------


def seed_tasks() -> dict[str, dict[str, str]]:
    """The tasks of ``examples/par-001/tasks.md`` (the seed), field by field."""
    tasks: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (PAR001 / "tasks.md").read_text().splitlines():
        if m := re.match(r"- \[x\] \*\*(TASK-\d+): (.*)\*\*$", line):
            current = tasks.setdefault(m.group(1), {"title": m.group(2)})
        elif (m := re.match(r"\s+- \*\*(\w+):\*\* (.*)$", line)) and current:
            current[m.group(1).lower()] = m.group(2)
    return tasks


def test_the_par_001_index_has_every_seed_task_with_its_estimate_and_dependencies() -> None:
    seed = seed_tasks()
    tickets = load_index(PAR001 / "index.json")
    assert [t["id"] for t in tickets] == [f"TASK-{n:03d}" for n in range(1, 30)]
    assert len(seed) == 29
    for t in tickets:
        task = seed[t["id"]]
        deps = [] if task["dependencies"] == "None" else task["dependencies"].split(", ")
        assert t["title"] == task["title"]
        assert t["estimate"] == task["estimate"]
        assert t["dependencies"] == deps
        assert t["acceptance_criteria"] == [task["validation"]]
        assert t["run"] == "python3 tools/write_file.py"
        for fn in re.findall(r"`(\w+)\(\)`", task.get("functions", "")):
            assert any(f.endswith(f"/{fn}.sh") for f in t["files"])


@pytest.mark.parametrize(
    "index", [PAR001 / "index.json", EXAMPLES / "agent-executor" / "index.json"]
)
def test_tickets_that_may_run_in_the_same_batch_never_write_the_same_file(index: Path) -> None:
    tickets = load_index(index)
    before = ancestors(tickets)
    for a, b in combinations(tickets, 2):
        if a["id"] in before[b["id"]] or b["id"] in before[a["id"]]:
            continue
        shared = set(a.get("files", [])) & set(b.get("files", []))
        assert not shared, f"{a['id']} and {b['id']} may run together and both write {shared}"


# -- the scripts tickets run -------------------------------------------------


def par001_ticket(tid: str) -> dict[str, Any]:
    return next(t for t in load_index(PAR001 / "index.json") if t["id"] == tid)


def test_write_file_writes_a_library_then_function_stubs_that_the_library_sources(
    tmp_path: Path,
) -> None:
    repo = build_repo("par-001", tmp_path / "repo")
    for tid in ["TASK-007", "TASK-008", "TASK-009"]:
        proc = run_script(repo / "tools/write_file.py", repo, par001_ticket(tid), tmp_path)
        assert proc.returncode == 0, proc.stderr
    lib = repo / ".sage/lib/commit-queue.sh"
    assert lib.read_text().startswith("#!/usr/bin/env bash\n# commit-queue.sh: TASK-007:")
    stub = repo / ".sage/lib/commit-queue.d/release_commit_lock.sh"
    assert "release_commit_lock() {" in stub.read_text()
    sourced = subprocess.run(
        ["bash", "-c", f"source {lib} && type enqueue_commit acquire_commit_lock"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert sourced.returncode == 0, sourced.stderr


def test_write_file_fails_when_a_dependency_has_not_written_its_files(tmp_path: Path) -> None:
    repo = build_repo("par-001", tmp_path / "repo")
    proc = run_script(repo / "tools/write_file.py", repo, par001_ticket("TASK-002"), tmp_path)
    assert proc.returncode == 1
    assert "TASK-002: dependency output missing: .sage/lib/parallel-scheduler.sh" in proc.stderr
    assert not (repo / ".sage/lib/parallel-scheduler.d").exists()


def test_write_file_appends_a_section_to_a_file_its_dependency_created(tmp_path: Path) -> None:
    repo = build_repo("par-001", tmp_path / "repo")
    for tid in ["TASK-025", "TASK-026"]:
        proc = run_script(repo / "tools/write_file.py", repo, par001_ticket(tid), tmp_path)
        assert proc.returncode == 0, proc.stderr
    text = (repo / "commands/SAGE_DEV_COMMANDS.md").read_text()
    assert text.index("## TASK-025:") < text.index("## TASK-026:")


def test_write_file_gives_the_same_bytes_every_time(tmp_path: Path) -> None:
    outputs = []
    for n in range(2):
        repo = build_repo("par-001", tmp_path / f"repo{n}")
        run_script(repo / "tools/write_file.py", repo, par001_ticket("TASK-013"), tmp_path)
        outputs.append((repo / "commands/stream.md.d/TASK-013.md").read_bytes())
    assert outputs[0] == outputs[1]
    assert b"Part of `commands/stream.md (Section 0)`." in outputs[0]


def test_the_stand_in_agent_reads_the_prompt_and_appends_to_the_ticket_files(
    tmp_path: Path,
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("# Ticket NOTES-002: Add the upgrade note\n\nDo it.\n")
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes/RELEASE.md").write_text("- NOTES-001: Start the release notes\n")
    ticket = next(t for t in load_index(EXAMPLES / "agent-executor/index.json")
                  if t["id"] == "NOTES-002")  # fmt: skip
    proc = run_script(AGENT, work, ticket, tmp_path, SAGE_PROMPT_FILE=str(prompt))
    assert proc.returncode == 0, proc.stderr
    assert "read a 3-line prompt for NOTES-002" in proc.stdout
    assert (work / "notes/RELEASE.md").read_text().splitlines() == [
        "- NOTES-001: Start the release notes",
        "- NOTES-002: Add the upgrade note",
    ]


def test_the_stand_in_agent_fails_without_a_prompt(tmp_path: Path) -> None:
    ticket = load_index(EXAMPLES / "agent-executor/index.json")[0]
    proc = run_script(AGENT, tmp_path, ticket, tmp_path, SAGE_PROMPT_FILE=str(tmp_path / "none"))
    assert proc.returncode == 2
    assert "no prompt" in proc.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / f"{ticket['id']}.json"]


# -- whole runs with --local -------------------------------------------------


def run_local(repo: Path, *args: str) -> dict[str, Any]:
    """``sage-submit --local --json`` on ``repo``; the run summary, with the exit code added."""
    proc = submit("--repo", str(repo), "--local", "--json", *args, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout)
    summary["exit_code"] = proc.returncode
    return summary


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def subjects(repo: Path, branch: str) -> list[str]:
    """Commit subjects on ``branch`` since ``main``, oldest first."""
    return git(repo, "log", "--reverse", "--format=%s", f"main..{branch}").splitlines()


def test_the_basic_example_commits_each_ticket_once_on_the_run_branch(tmp_path: Path) -> None:
    repo = build_repo("basic", tmp_path / "repo")
    summary = run_local(repo)
    assert summary["exit_code"] == 0
    assert sorted(summary["completed"]) == ["HELLO-001", "HELLO-002", "HELLO-003"]
    assert sorted(subjects(repo, summary["branch"])) == [
        "HELLO-001: Say hello in English",
        "HELLO-002: Say hello in French",
        "HELLO-003: Say hello in Spanish",
    ]
    assert git(repo, "show", f"{summary['branch']}:bonjour.txt") == "bonjour\n"
    assert git(repo, "rev-parse", summary["branch"]).strip() == summary["head"]


def test_the_dependencies_example_commits_every_ticket_after_its_dependencies(
    tmp_path: Path,
) -> None:
    repo = build_repo("dependencies", tmp_path / "repo")
    summary = run_local(repo)
    assert summary["exit_code"] == 0
    order = [s.split(":")[0] for s in subjects(repo, summary["branch"])]
    assert sorted(order) == sorted(
        t["id"] for t in load_index(EXAMPLES / "dependencies/index.json")
    )
    for t in load_index(EXAMPLES / "dependencies/index.json"):
        for dep in t["dependencies"]:
            assert order.index(dep) < order.index(t["id"])


def test_the_deferrals_example_defers_a_conflict_and_a_failure_and_blocks_the_dependent(
    tmp_path: Path,
) -> None:
    repo = build_repo("deferrals", tmp_path / "repo")
    summary = run_local(repo, "--parallel", "3")
    assert summary["exit_code"] == 1
    assert summary["completed"] == ["THEME-001"]
    assert set(summary["deferred"]) == {"THEME-002", "LINT-001"}
    assert "config.txt" in summary["deferred"]["THEME-002"]
    assert "exit code 1" in summary["deferred"]["LINT-001"]
    assert "unknown color" in summary["deferred"]["LINT-001"]
    assert summary["blocked"] == ["THEME-003"]
    branch = summary["branch"]
    assert git(repo, "show", f"{branch}:config.txt") == "color = blue\n"
    index = json.loads(git(repo, "show", f"{branch}:.sage/tickets/index.json"))
    assert {t["id"]: t.get("state", "UNPROCESSED") for t in index["tickets"]} == {
        "THEME-001": "COMPLETED",
        "THEME-002": "DEFERRED",
        "THEME-003": "UNPROCESSED",
        "LINT-001": "DEFERRED",
    }

    # resumed with --retry-deferred, the conflicting ticket starts from the new line
    again = run_local(repo, "--parallel", "3", "--branch", branch, "--retry-deferred")
    assert again["exit_code"] == 1
    assert sorted(again["completed"]) == ["THEME-002", "THEME-003"]
    assert set(again["deferred"]) == {"LINT-001"}
    assert git(repo, "show", f"{branch}:config.txt") == "color = green\n"


def test_the_agent_example_runs_the_stand_in_agent_as_the_executor(tmp_path: Path) -> None:
    repo = build_repo("agent-executor", tmp_path / "repo")
    summary = run_local(repo, "--executor", AGENT_EXECUTOR)
    assert summary["exit_code"] == 0
    branch = summary["branch"]
    assert git(repo, "show", f"{branch}:notes/RELEASE.md").splitlines() == [
        "- NOTES-001: Start the release notes",
        "- NOTES-002: Add the upgrade note",
    ]
    assert git(repo, "show", f"{branch}:CHANGELOG.md") == "- CHANGELOG-001: Add a changelog entry\n"


def test_the_par_001_demo_runs_all_29_tickets_in_dependency_order(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(PAR001 / "demo.py"), "--parallel", "4"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    hint = re.search(r"git -C (\S+) log --oneline main\.\.(\S+)", proc.stdout)
    assert hint, proc.stdout
    assert "wall time:" in proc.stdout
    repo, branch = Path(hint[1]), hint[2]
    assert len(subjects(repo, branch)) == 29
    # the run stays readable: its report was written, and the printed command writes it again
    report = re.search(r"^report:\s+(\S+\.html)", proc.stdout, re.M)
    assert report and Path(report[1]).read_text().count('data-ticket="TASK-') >= 29, proc.stdout
    again = re.search(r"^\s+(\S*sage-submit report .+)$", proc.stdout, re.M)
    assert again, proc.stdout
    made = subprocess.run(
        shlex.split(again[1]), capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "run.html").read_text().count(branch.removeprefix("sage/run-")) >= 1
    tree = git(repo, "ls-tree", "-r", "--name-only", branch).splitlines()
    for t in load_index(PAR001 / "index.json"):
        assert set(t["files"]) <= set(tree), t["id"]
