"""The command line: ``sage-submit`` and ``sage-worker``, and what only they do.

Submitting a run, the local fleet, the checks; the top layer, free to import any other.
"""
