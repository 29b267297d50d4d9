"""Reading patches in the ``git diff --binary`` format.

The reader is strict on purpose: a patch comes over the wire from a ticket
worker and is never trusted, so every line must be one that ``git diff``
writes, every name ``git apply`` would act on is collected (the
``diff --git`` line, ``---``/``+++`` lines, rename and copy lines), and
anything else rejects the whole patch. A traditional diff smuggled between
two sections cannot slip past as unparsed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sage_tasks.errors import PatchRejected

SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"

_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_MODE_RE = re.compile(r"^[0-7]{6}$")
_OID_RE = re.compile(r"^[0-9a-f]{4,64}$")
_BASE85_LINE_RE = re.compile(rb"^[A-Za-z][0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]+$")
_HEADER_KEYS = (
    b"old mode ",
    b"new mode ",
    b"deleted file mode ",
    b"new file mode ",
    b"copy from ",
    b"copy to ",
    b"rename from ",
    b"rename to ",
    b"rename old ",
    b"rename new ",
    b"similarity index ",
    b"dissimilarity index ",
    b"index ",
)
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}


@dataclass
class FileDiff:
    """One ``diff --git`` section of a patch."""

    #: every name this section gives, without the a/ b/ prefix (all are checked)
    names: list[str] = field(default_factory=list)
    old_path: str | None = None
    new_path: str | None = None
    old_mode: str | None = None
    new_mode: str | None = None
    #: blob ids from the ``index`` line (abbreviated unless ``--full-index``)
    old_oid: str | None = None
    new_oid: str | None = None
    binary: bool = False
    #: the text the section's hunks add (a symlink's target)
    added: bytes = b""
    #: byte offsets of the section in the patch
    start: int = 0
    end: int = 0

    @property
    def paths(self) -> list[str]:
        """The repository paths the section changes: source then destination."""
        out: list[str] = []
        for p in (self.old_path, self.new_path):
            if p is not None and p not in out:
                out.append(p)
        return out


def unquote(name: str) -> str:
    """A path as git writes it, C-quoted when it holds special characters, made plain."""
    if not (len(name) >= 2 and name[0] == '"' and name[-1] == '"'):
        return name
    body, out = name[1:-1], bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt].encode()
            i += 2
        elif re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise PatchRejected(f"bad quoting in patch path {name!r}")
    return out.decode("utf-8", "surrogateescape")


def _split_quoted(text: str) -> tuple[str, str]:
    """Split ``"quoted" rest`` into the quoted name (still quoted) and what follows."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return text[: i + 1], text[i + 1 :]
        i += 1
    raise PatchRejected(f"unterminated quoted path in patch: {text!r}")


def _strip_prefix(name: str) -> str:
    """Drop the first component (``a/``, ``b/``), as ``git apply -p1`` does."""
    if "/" not in name:
        raise PatchRejected(f"patch path {name!r} has no a/ or b/ prefix")
    return name.split("/", 1)[1]


def _git_header_names(rest: str) -> tuple[str, str] | None:
    """The two names of ``diff --git A B``, or None when they cannot be told apart."""
    if rest.startswith('"'):
        first, tail = _split_quoted(rest)
        if not tail.startswith(" "):
            return None
        second = tail[1:]
        return _strip_prefix(unquote(first)), _strip_prefix(unquote(second))
    if rest.endswith('"'):
        pos = rest.find(' "')
        if pos < 0:
            return None
        return _strip_prefix(rest[:pos]), _strip_prefix(unquote(rest[pos + 1 :]))
    # unquoted, possibly with spaces: only unambiguous when both names are the same
    found = None
    for m in re.finditer(" ", rest):
        a, b = rest[: m.start()], rest[m.end() :]
        if "/" in a and "/" in b and _strip_prefix(a) == _strip_prefix(b):
            if found is not None:
                return None
            found = (_strip_prefix(a), _strip_prefix(b))
    return found


def _file_name(value: bytes) -> str | None:
    """The path of a ``---``/``+++`` line (None for /dev/null)."""
    text = value.decode("utf-8", "surrogateescape")
    if text.startswith('"'):
        quoted, _ = _split_quoted(text)
        name = unquote(quoted)
    else:
        name = text.split("\t", 1)[0]
    if name == "/dev/null":
        return None
    return _strip_prefix(name)


def _plain(value: bytes) -> str:
    text = value.decode("utf-8", "surrogateescape")
    return unquote(text) if text.startswith('"') else text


def parse_patch(data: bytes) -> list[FileDiff]:
    """Parse a patch into its sections; raises :class:`PatchRejected` on anything unexpected."""
    lines = data.split(b"\n")
    trailing = lines.pop() if lines else b""
    if trailing:
        raise PatchRejected("patch does not end with a newline")
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln) + 1)
    files: list[FileDiff] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.startswith(b"diff --git "):
            raise PatchRejected(f"unexpected line {i + 1} in patch: {line[:60]!r}")
        fd = FileDiff(start=offsets[i])
        names = _git_header_names(line[11:].decode("utf-8", "surrogateescape"))
        if names is not None:
            fd.names.extend(names)
            fd.old_path, fd.new_path = names
        i = _parse_header(lines, i + 1, fd)
        if i < n and lines[i].startswith(b"--- "):
            if i + 1 >= n or not lines[i + 1].startswith(b"+++ "):
                raise PatchRejected(f"line {i + 1} of patch: '---' without '+++'")
            old, new = _file_name(lines[i][4:]), _file_name(lines[i + 1][4:])
            fd.names.extend(p for p in (old, new) if p is not None)
            fd.old_path, fd.new_path = old, new
            i = _parse_hunks(lines, i + 2, fd)
        elif i < n and lines[i] == b"GIT binary patch":
            fd.binary = True
            i = _parse_binary(lines, i + 1)
        elif i < n and lines[i].startswith(b"Binary files "):
            fd.binary = True
            i += 1
        if not fd.names:
            raise PatchRejected(f"cannot tell the path of the patch section at line {i}")
        fd.end = offsets[i]
        files.append(fd)
    return files


def _parse_header(lines: list[bytes], i: int, fd: FileDiff) -> int:
    while i < len(lines):
        line = lines[i]
        key = next((k for k in _HEADER_KEYS if line.startswith(k)), None)
        if key is None:
            return i
        value = line[len(key) :]
        text = value.decode("utf-8", "surrogateescape")
        if key in (b"old mode ", b"deleted file mode "):
            fd.old_mode = _mode(text)
            if key == b"deleted file mode ":
                fd.new_path = None
        elif key in (b"new mode ", b"new file mode "):
            fd.new_mode = _mode(text)
            if key == b"new file mode ":
                fd.old_path = None
        elif key == b"index ":
            parts = text.split(" ")
            ids = parts[0].split("..")
            if len(ids) != 2 or not all(_OID_RE.match(x) for x in ids):
                raise PatchRejected(f"bad index line {text!r} in patch")
            fd.old_oid, fd.new_oid = ids
            if len(parts) == 2:
                fd.old_mode = fd.old_mode or _mode(parts[1])
                fd.new_mode = fd.new_mode or _mode(parts[1])
        elif key in (b"rename from ", b"copy from ", b"rename old "):
            fd.old_path = _plain(value)
            fd.names.append(fd.old_path)
        elif key in (b"rename to ", b"copy to ", b"rename new "):
            fd.new_path = _plain(value)
            fd.names.append(fd.new_path)
        i += 1
    return i


def _mode(text: str) -> str:
    if not _MODE_RE.match(text):
        raise PatchRejected(f"bad file mode {text!r} in patch")
    return text


def _parse_hunks(lines: list[bytes], i: int, fd: FileDiff) -> int:
    added: list[bytes] = []
    while i < len(lines) and lines[i].startswith(b"@@ "):
        m = _HUNK_RE.match(lines[i])
        if m is None:
            raise PatchRejected(f"bad hunk header at line {i + 1} of patch")
        old = int(m.group(2)) if m.group(2) is not None else 1
        new = int(m.group(4)) if m.group(4) is not None else 1
        i += 1
        while old > 0 or new > 0:
            if i >= len(lines):
                raise PatchRejected("patch ends inside a hunk")
            line = lines[i]
            tag = line[:1]
            if tag in (b" ", b""):
                old, new = old - 1, new - 1
            elif tag == b"-":
                old -= 1
            elif tag == b"+":
                new -= 1
                added.append(line[1:])
            elif tag != b"\\":
                raise PatchRejected(f"bad line {i + 1} in a hunk of the patch")
            if old < 0 or new < 0:
                raise PatchRejected(f"hunk at line {i + 1} of the patch is longer than it says")
            i += 1
        if i < len(lines) and lines[i].startswith(b"\\"):
            i += 1
    fd.added = b"\n".join(added)
    return i


def _parse_binary(lines: list[bytes], i: int) -> int:
    for block in range(2):
        if i >= len(lines) or not lines[i].startswith((b"literal ", b"delta ")):
            if block == 0:
                raise PatchRejected(f"bad binary patch at line {i + 1}")
            return i
        i += 1
        while i < len(lines) and lines[i]:
            if not _BASE85_LINE_RE.match(lines[i]):
                raise PatchRejected(f"bad binary data at line {i + 1} of the patch")
            i += 1
        if i >= len(lines):
            raise PatchRejected("patch ends inside binary data")
        i += 1
    return i
