"""The git layer: the only package that runs git.

- producer side (:mod:`.branch`): prepare the run's branch, read the index at a ref;
- ticket workers (:mod:`.mirror`, :mod:`.patch`): a cached mirror per URL,
  throw-away worktrees, a ticket's changes captured as one binary patch;
- the commit worker (:mod:`.commit`): a patch and the index change as one
  commit, without a work tree, published by compare-and-swap, exactly once;
- :mod:`.safety` refuses patches that would write outside the tree.
"""

from sage_tasks.core.urls import redact_url
from sage_tasks.gitops.branch import (
    PROTECTED_BRANCHES,
    BranchInfo,
    branch_head,
    check_branch_name,
    prepare_branch,
    read_index_at,
    resolve_ref,
    working_copy_differs,
)
from sage_tasks.gitops.commit import ChainItem, CommitResult, CommitTarget
from sage_tasks.gitops.history import TicketCommit, ticket_commits
from sage_tasks.gitops.leftovers import prune_workdir
from sage_tasks.gitops.mirror import Mirror
from sage_tasks.gitops.patch import Patch, capture_patch
from sage_tasks.gitops.probe import git_version, url_readable
from sage_tasks.gitops.repository import Repository, repo_root
from sage_tasks.gitops.safety import check_patch

__all__ = [
    "PROTECTED_BRANCHES",
    "BranchInfo",
    "ChainItem",
    "CommitResult",
    "CommitTarget",
    "Mirror",
    "Patch",
    "Repository",
    "TicketCommit",
    "branch_head",
    "capture_patch",
    "check_branch_name",
    "check_patch",
    "git_version",
    "prepare_branch",
    "prune_workdir",
    "read_index_at",
    "redact_url",
    "repo_root",
    "resolve_ref",
    "ticket_commits",
    "url_readable",
    "working_copy_differs",
]
