"""Helpers the test tiers share; each name has one home.

- ``builders``: tickets, indexes, run records, what ``sage-submit`` answered
- ``procs``: the installed entry points, process groups and trees, polling
- ``gitrepo``: real git repositories, built and read
- ``worktrees``: a ticket worker's worktrees seen from outside (their files
  against a fresh clone, the git commands run in them)
- ``runs``: what a run left: its branch, its JSON rows, its records in Redis
- ``redis_server``, ``tls``: real redis-server processes, plain or TLS only
- ``fleet``: sage-worker processes on a private redis-server (the integration
  tier's ``fleet`` fixture is in tests/integration/conftest.py)
- ``faults``: traced tickets, history checks, a worker host killed whole
- ``netns_topology``, ``netns_fleet``: hosts in network namespaces, and a fleet
  on them (the ``multihost`` fixture is in tests/slow/conftest.py)
- ``browser``, ``png``, ``net``: headless Chromium, screenshots, sockets and HTTP
"""
