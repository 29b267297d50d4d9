"""A patch applied to a tree in process: a commit that costs what the patch changes.

A ticket's patch is made against the commit the ticket ran on; in the usual
case each file it changes is still at the branch head exactly as the patch
expects. Then applying the patch is plain arithmetic on the files it names:
read each preimage blob, check every context and removed line at the place
the hunk says (no offset, no fuzz: what ``git apply`` does first, and gives
the same bytes for), write the new blobs and the trees on the paths to
them. Nothing reads the rest of the tree, so a commit on a 50,000-file tree
costs what one on a 100-file tree does.

Anything else (a binary or renamed file, a file that moved on since the
ticket's base, a name git would write differently, a repository whose
objects git must write) is left to git: :func:`patch_tree` returns None.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from sage_tasks.gitops.diff import FileDiff

_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_TREE_MODE = b"40000"
#: the modes a patched file may have here (gitlinks and anything odd go to git)
_FILE_MODES = frozenset({b"100644", b"100755", b"120000"})

#: reads an object: ``(type, data)`` or None when it does not exist
Reader = Callable[[str], "tuple[str, bytes] | None"]
#: writes an object of a type; returns its id
Writer = Callable[[str, bytes], str]


@dataclass(frozen=True)
class Entry:
    """One tree entry as git wrote it (mode without leading zero, name, binary id)."""

    mode: bytes
    name: bytes
    oid: bytes

    @property
    def is_tree(self) -> bool:
        """True for a subtree."""
        return self.mode == _TREE_MODE


class _Fallback(Exception):
    """The patch is not one this module applies: git applies it."""


def parse_tree(data: bytes, oid_size: int) -> list[Entry]:
    """The entries of a tree object (raises ValueError when it is malformed)."""
    out: list[Entry] = []
    pos, size = 0, len(data)
    while pos < size:
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        end = nul + 1 + oid_size
        if end > size:
            raise ValueError("truncated tree entry")
        out.append(Entry(data[pos:space], data[space + 1 : nul], data[nul + 1 : end]))
        pos = end
    return out


def tree_data(entries: list[Entry]) -> bytes:
    """A tree object's content from its entries (sorted as git sorts them)."""
    entries = sorted(entries, key=_sort_key)
    return b"".join(e.mode + b" " + e.name + b"\0" + e.oid for e in entries)


def _sort_key(entry: Entry) -> bytes:
    # git compares a subtree's name as if it ended with a slash
    return entry.name + b"/" if entry.is_tree else entry.name


def apply_hunks(old: bytes, section: bytes) -> bytes:
    """The file ``old`` with the text hunks of one ``diff --git`` section applied exactly.

    Every hunk must match at the line it names; raises :class:`_Fallback`
    otherwise (git then tries harder, with a 3-way merge).
    """
    lines = section.split(b"\n")
    i = 0
    while i < len(lines) and not lines[i].startswith(b"@@ "):
        i += 1
    source = _lines(old)
    out: list[bytes] = []
    done = 0  # lines of ``source`` already copied or replaced
    while i < len(lines) and lines[i].startswith(b"@@ "):
        m = _HUNK_RE.match(lines[i])
        if m is None:
            raise _Fallback("bad hunk")
        start, count = int(m.group(1)), int(m.group(2) or 1)
        i, before, after = _hunk_lines(lines, i + 1, count, int(m.group(4) or 1))
        at = start if count == 0 else start - 1
        if at < done or source[at : at + len(before)] != before:
            raise _Fallback("hunk does not match")
        out.extend(source[done:at])
        out.extend(after)
        done = at + len(before)
    out.extend(source[done:])
    return b"".join(out)


def _lines(data: bytes) -> list[bytes]:
    """``data``'s lines, each with its newline (the last may have none), as git splits them."""
    parts = data.split(b"\n")
    last = parts.pop()
    out = [part + b"\n" for part in parts]
    if last:
        out.append(last)
    return out


def _hunk_lines(
    lines: list[bytes], i: int, old: int, new: int
) -> tuple[int, list[bytes], list[bytes]]:
    """One hunk's preimage and postimage lines (with their line ends); the line after it."""
    before: list[bytes] = []
    after: list[bytes] = []
    while old > 0 or new > 0:
        line = lines[i]
        tag, text = line[:1], line[1:] + b"\n"
        if tag in (b" ", b""):
            before.append(text)
            after.append(text)
            old, new = old - 1, new - 1
        elif tag == b"-":
            before.append(text)
            old -= 1
        elif tag == b"+":
            after.append(text)
            new -= 1
        i += 1
        if i < len(lines) and lines[i].startswith(b"\\"):
            # "\ No newline at end of file": the line just read has none
            if tag in (b" ", b"", b"-"):
                before[-1] = before[-1][:-1]
            if tag in (b" ", b"", b"+"):
                after[-1] = after[-1][:-1]
            i += 1
    return i, before, after


class TreePatcher:
    """Applies patches to trees of one repository through its object reader and writer."""

    def __init__(self, read: Reader, write: Writer, object_format: str) -> None:
        self._read = read
        self._write = write
        self._format = object_format
        self._oid_size = hashlib.new(object_format).digest_size
        self._trees: dict[bytes, list[Entry]] = {}

    def patch_tree(
        self, tree: str, patch: bytes, files: list[FileDiff], extra: dict[str, bytes]
    ) -> str | None:
        """``tree`` with ``files`` (sections of ``patch``) applied and ``extra`` files rewritten.

        ``extra`` maps existing regular files to their new content (the
        ticket index). None when git must do it (see the module docs).
        """
        try:
            edits: dict[bytes, tuple[bytes, bytes] | None] = {}
            for fd in files:
                path, change = self._file_change(tree, patch[fd.start : fd.end], fd)
                if path in edits:
                    raise _Fallback("a path changed twice")
                edits[path] = change
            for name, data in extra.items():
                path = name.encode("utf-8", "surrogateescape")
                found = self._lookup(tree, path)
                if path in edits or found is None or found.mode not in (b"100644", b"100755"):
                    raise _Fallback("extra file is not a regular file")
                edits[path] = (found.mode, self._blob(data))
            new = self._edit(bytes.fromhex(tree), _split(edits))
        except (_Fallback, ValueError, IndexError):
            return None
        return new.hex() if new is not None else None

    # -- one file ----------------------------------------------------------------

    def _file_change(
        self, tree: str, section: bytes, fd: FileDiff
    ) -> tuple[bytes, tuple[bytes, bytes] | None]:
        """The path a section changes and its new (mode, binary blob id), None when deleted."""
        if fd.binary or (fd.old_path and fd.new_path and fd.old_path != fd.new_path):
            raise _Fallback("binary, renamed or copied")
        name = fd.new_path or fd.old_path
        assert name is not None
        path = name.encode("utf-8", "surrogateescape")
        found = self._lookup(tree, path)
        old = b""
        if fd.old_path is None:
            if found is not None:
                raise _Fallback("a new file that exists")
        else:
            if found is None or found.mode not in _FILE_MODES:
                raise _Fallback("changes a file that is not there")
            if fd.old_oid is not None and not found.oid.hex().startswith(fd.old_oid):
                raise _Fallback("the file moved on since the ticket's base")
            if fd.old_mode is not None and found.mode != fd.old_mode.encode():
                raise _Fallback("the file's mode moved on")
            old = self._object(found.oid.hex(), "blob")
        new = apply_hunks(old, section)
        if fd.new_path is None:
            if new:
                raise _Fallback("a deletion that leaves content")
            return path, None
        mode = (fd.new_mode or "").encode() or (found.mode if found else b"100644")
        if mode not in _FILE_MODES:
            raise _Fallback("an unusual mode")
        blob = self._blob(new)
        if fd.new_oid is not None and not blob.hex().startswith(fd.new_oid):
            raise _Fallback("the result is not the blob the patch names")
        return path, (mode, blob)

    def _blob(self, data: bytes) -> bytes:
        return bytes.fromhex(self._write("blob", data))

    # -- trees -------------------------------------------------------------------

    def _object(self, oid: str, kind: str) -> bytes:
        obj = self._read(oid)
        if obj is None or obj[0] != kind:
            raise _Fallback(f"{oid} is not a {kind}")
        return obj[1]

    def _entries(self, oid: bytes) -> list[Entry]:
        entries = self._trees.get(oid)
        if entries is None:
            entries = parse_tree(self._object(oid.hex(), "tree"), self._oid_size)
            if len(self._trees) > 4096:
                self._trees.clear()
            self._trees[oid] = entries
        return entries

    def _lookup(self, tree: str, path: bytes) -> Entry | None:
        """The entry at ``path`` under ``tree``, or None."""
        oid, found = bytes.fromhex(tree), None
        for name in path.split(b"/"):
            if found is not None and not found.is_tree:
                return None
            found = next((e for e in self._entries(oid) if e.name == name), None)
            if found is None:
                return None
            oid = found.oid
        return found

    def _edit(self, oid: bytes | None, edits: _Edits) -> bytes | None:
        """The tree ``oid`` (None: an empty one) with ``edits``; None when it ends up empty."""
        entries = list(self._entries(oid)) if oid is not None else []
        by_name = {e.name: i for i, e in enumerate(entries)}
        removed: set[int] = set()
        for name, change in edits.items():
            at = by_name.get(name)
            current = entries[at] if at is not None else None
            if isinstance(change, dict):
                if current is not None and not current.is_tree:
                    raise _Fallback("a folder where a file is")
                sub = self._edit(current.oid if current else None, change)
                new = Entry(_TREE_MODE, name, sub) if sub is not None else None
            elif change is None:
                new = None
            else:
                if current is not None and current.is_tree:
                    raise _Fallback("a file where a folder is")
                new = Entry(change[0], name, change[1])
            if at is None:
                if new is not None:
                    entries.append(new)
            elif new is None:
                removed.add(at)
            else:
                entries[at] = new
        kept = [e for i, e in enumerate(entries) if i not in removed]
        if not kept:
            return None
        data = tree_data(kept)
        new_oid = bytes.fromhex(self._write("tree", data))
        self._trees[new_oid] = parse_tree(data, self._oid_size)
        return new_oid


#: a tree's edits: name -> new (mode, blob id), None to delete, or the edits of a subtree
_Edits = dict[bytes, "tuple[bytes, bytes] | _Edits | None"]


def _split(edits: dict[bytes, tuple[bytes, bytes] | None]) -> _Edits:
    """Path edits as nested per-folder edits."""
    root: _Edits = {}
    for path, change in edits.items():
        *folders, leaf = path.split(b"/")
        node = root
        for folder in folders:
            sub = node.setdefault(folder, {})
            if not isinstance(sub, dict):
                raise _Fallback("a path under a changed file")
            node = sub
        if leaf in node:
            raise _Fallback("a file where a changed folder is")
        node[leaf] = change
    return root
