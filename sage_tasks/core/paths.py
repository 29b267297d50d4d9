"""Tickets' ``paths``: which globs are valid, and whether two glob sets can touch one file.

A glob is relative to the repository root and ``/``-separated: ``*`` and
``?`` match within one path segment, ``**`` as a whole segment matches any
number of segments (``src/**/test_*.py``), ``[...]`` is a character class,
and ``\\`` escapes the next character. A glob also covers everything under
what it matches (``docs`` covers ``docs/index.md``), so a directory can be
named by its path.

Two globs overlap when some path is covered by both. That is decided
exactly, not by sampling: each glob becomes a small automaton over
characters, and the product of the two is searched for a state where both
accept (characters the globs never name are one symbol). Character classes
are read as "any character but ``/``", so the answer errs only towards
overlap: two tickets are kept apart when unsure, never run together by
mistake.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

#: a transition's matcher: one literal character, any but "/", or any
_ANY_BUT_SLASH = "\x00nonslash"
_ANY = "\x00any"


def glob_problem(glob: object) -> str | None:
    """Why ``glob`` cannot be a ticket's path (None when it can)."""
    if not isinstance(glob, str):
        return f"is not a string but {type(glob).__name__}"
    if not glob.strip():
        return "is empty"
    if "\x00" in glob or "\n" in glob:
        return "holds a NUL or newline character"
    if glob.startswith("/"):
        return "is absolute (paths are relative to the repository root)"
    if ".." in glob.rstrip("/").split("/"):
        return "leaves the repository ('..')"
    return None


@dataclass(slots=True)
class _Automaton:
    """A nondeterministic automaton: ``moves[s]`` are (matcher, target), ``free[s]`` epsilons."""

    moves: list[list[tuple[str, int]]] = field(default_factory=list)
    free: list[list[int]] = field(default_factory=list)
    accept: set[int] = field(default_factory=set)
    literals: set[str] = field(default_factory=set)

    def state(self) -> int:
        self.moves.append([])
        self.free.append([])
        return len(self.moves) - 1

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        todo = list(seen)
        while todo:
            for t in self.free[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    def step(self, states: frozenset[int], symbol: str) -> frozenset[int]:
        out = [
            t
            for s in states
            for m, t in self.moves[s]
            if m in (symbol, _ANY) or (m == _ANY_BUT_SLASH and symbol != "/")
        ]
        return self.closure(out)


def _segments(glob: str) -> list[str]:
    parts = [p for p in glob.strip("/").split("/") if p not in ("", ".")]
    out: list[str] = []
    for p in parts:
        if not (p == "**" and out and out[-1] == "**"):
            out.append(p)
    return out


def _class_end(seg: str, start: int) -> int:
    """Where the character class opening at ``seg[start]`` ends (-1: it never does)."""
    j = start + 1
    if seg[j : j + 1] in ("!", "^"):
        j += 1
    if seg[j : j + 1] == "]":
        j += 1
    return seg.find("]", j)


def normalize(glob: str) -> str:
    """The glob with empty and ``.`` segments and repeated ``**`` dropped."""
    return "/".join(_segments(glob))


@lru_cache(maxsize=4096)
def _compile(glob: str) -> _Automaton:
    nfa = _Automaton()
    cur = nfa.state()
    segments = _segments(glob)
    for n, seg in enumerate(segments):
        last = n == len(segments) - 1
        if seg == "**":
            loop = nfa.state()
            nfa.free[cur].append(loop)
            nfa.moves[loop].append((_ANY, loop))
            nxt = nfa.state()
            if last:
                nfa.free[loop].append(nxt)
            else:  # "**/": nothing, or anything ending in "/"
                nfa.free[cur].append(nxt)
                nfa.moves[loop].append(("/", nxt))
            cur = nxt
            continue
        i = 0
        while i < len(seg):
            c = seg[i]
            nxt = nfa.state()
            if c == "*":
                nfa.moves[cur].append((_ANY_BUT_SLASH, cur))
                nfa.free[cur].append(nxt)
            elif c == "?":
                nfa.moves[cur].append((_ANY_BUT_SLASH, nxt))
            elif c == "[" and (end := _class_end(seg, i)) > 0:
                nfa.moves[cur].append((_ANY_BUT_SLASH, nxt))  # any class: conservative
                i = end
            else:
                if c == "\\" and i + 1 < len(seg):
                    i += 1
                    c = seg[i]
                nfa.moves[cur].append((c, nxt))
                nfa.literals.add(c)
            cur = nxt
            i += 1
        if not last:
            nxt = nfa.state()
            nfa.moves[cur].append(("/", nxt))
            cur = nxt
    # what a glob matches covers everything under it
    below = nfa.state()
    nfa.moves[cur].append(("/", below))
    nfa.moves[below].append((_ANY, below))
    nfa.accept = {cur, below}
    return nfa


def overlap_witness(a: str, b: str) -> str | None:
    """A path covered by both globs, or None when there is none."""
    na, nb = _compile(a), _compile(b)
    other = next(c for c in "xyzqjkXYZQJK0123456789_" if c not in na.literals | nb.literals)
    alphabet = sorted(na.literals | nb.literals | {"/", other})
    start = (na.closure([0]), nb.closure([0]))
    parent: dict[tuple[frozenset[int], frozenset[int]], tuple[object, str]] = {start: (None, "")}
    queue = deque([start])
    while queue:
        pair = queue.popleft()
        sa, sb = pair
        if sa & na.accept and sb & nb.accept:
            chars: list[str] = []
            node: object = pair
            while node is not None:
                prev, ch = parent[node]  # type: ignore[index]
                chars.append(ch)
                node = prev
            return "".join(reversed(chars))
        for sym in alphabet:
            nxt = (na.step(sa, sym), nb.step(sb, sym))
            if nxt[0] and nxt[1] and nxt not in parent:
                parent[nxt] = (pair, sym)
                queue.append(nxt)
    return None


def globs_overlap(a: str, b: str) -> bool:
    """True when some path is covered by both globs."""
    return overlap_witness(a, b) is not None


def _fixed_prefix(glob: str) -> str:
    for n, c in enumerate(glob):
        if c in "*?[\\":
            return glob[:n]
    return glob


def sets_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    """True when a glob of ``a`` and a glob of ``b`` overlap."""
    for x in a:
        px = _fixed_prefix(normalize(x))
        for y in b:
            py = _fixed_prefix(normalize(y))
            if not (px.startswith(py) or py.startswith(px)):
                continue  # their fixed starts already differ
            if globs_overlap(x, y):
                return True
    return False


def overlapping(paths: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """For each ticket with ``paths``, the other tickets whose paths overlap its own."""
    ids = sorted(paths)
    out: dict[str, list[str]] = {}
    for n, a in enumerate(ids):
        for b in ids[n + 1 :]:
            if sets_overlap(paths[a], paths[b]):
                out.setdefault(a, []).append(b)
                out.setdefault(b, []).append(a)
    return out
