"""The command line: ``sage-submit`` and ``sage-worker``."""
