"""An index's tickets read a field at a time, as the fast checks and counts need them."""

from __future__ import annotations

from itertools import chain, repeat
from typing import Any


class Columns:
    """The fields of tickets that are all plain dicts, each read as one list.

    Reading a field is one C loop over every ticket; a field that no ticket
    has (most of the optional ones, in most indexes) is known from one pass
    over all keys and costs nothing to read.
    """

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items
        #: every field name some ticket has
        self.names = set(chain.from_iterable(items))

    def __call__(self, key: str, default: Any = None) -> list[Any]:
        """``item.get(key, default)`` of every ticket."""
        if key not in self.names:
            return [default] * len(self.items)
        return list(map(dict.get, self.items, repeat(key), repeat(default)))

    def present_values(self, key: str) -> dict[int, Any]:
        """Slot -> value, for the tickets whose ``key`` is there and not null."""
        if key not in self.names:
            return {}
        return {v: x for v, x in enumerate(self(key)) if x is not None}
