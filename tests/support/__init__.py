"""Helpers the test tiers share: real redis-server processes and real git repositories."""
