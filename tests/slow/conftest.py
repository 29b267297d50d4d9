"""Fixtures of the slow tier."""

from tests.support.netns import multihost  # noqa: F401  (a fixture, used by name)
