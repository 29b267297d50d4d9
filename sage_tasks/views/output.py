"""Machine output: JSON written to stdout as it is produced, whatever its size.

A document is a mapping whose values may be iterables (a generator of
ticket rows, say): those are written as arrays a chunk of items at a time,
so a 100,000-ticket status never sits in memory as one string and nothing
passes through a pretty-printer. Everything else is encoded by orjson as
compact JSON (``json.loads`` reads back exactly what was meant); a person at
a terminal gets it indented.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import IO, Any

import orjson

from sage_tasks.errors import OutputError

#: items of a streamed array encoded and written at once
CHUNK = 2000


class Stream:
    """An iterable written as a JSON array, a chunk at a time (a mapping's value)."""

    def __init__(self, items: Iterable[Any]):
        self.items = items


def _array(items: Iterable[Any]) -> Iterator[bytes]:
    it = iter(items)
    yield b"["
    first = True
    while chunk := list(islice(it, CHUNK)):
        body = orjson.dumps(chunk)[1:-1]
        if body:
            yield body if first else b"," + body
            first = False
    yield b"]"


def encode(document: Mapping[str, Any]) -> Iterator[bytes]:
    """``document`` as compact JSON, in pieces; :class:`Stream` values as streamed arrays."""
    yield b"{"
    for n, (key, value) in enumerate(document.items()):
        yield (b"," if n else b"") + orjson.dumps(key) + b":"
        if isinstance(value, Stream):
            yield from _array(value.items)
        else:
            yield orjson.dumps(value)
    yield b"}\n"


def write_json(document: Mapping[str, Any], stream: IO[bytes] | None = None) -> None:
    """Write ``document`` to stdout (or ``stream``) as it is produced.

    On a terminal, where a person reads it, the whole document is indented.
    """
    out = stream or sys.stdout.buffer
    try:
        sys.stdout.flush()
        if stream is None and sys.stdout.isatty():
            whole = {k: list(v.items) if isinstance(v, Stream) else v for k, v in document.items()}
            out.write(orjson.dumps(whole, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            for piece in encode(document):
                out.write(piece)
        out.flush()
    except BrokenPipeError:
        raise  # the reader is gone (``| head``): the command line ends quietly
    except OSError as exc:
        raise OutputError(f"cannot write the output: {exc.strerror or exc}") from None
