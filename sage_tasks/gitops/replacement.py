"""A patch that replaces one file's content: how the ticket index change rides along.

The commit path sends the ticket's patch and the index change to git in one
``git apply``; this module writes the second part.
"""

from __future__ import annotations

import base64
import re
import zlib

_CONTEXT = 3


def replace_file_patch(path: str, old_oid: str, new_oid: str, old: bytes, new: bytes) -> bytes:
    """A patch turning the blob ``old_oid`` (content ``old``) at ``path`` into ``new``.

    One text hunk around the lines that differ (a state change touches one
    ticket), so git reads and writes little; a binary patch when either side
    is not plain newline-terminated text.
    """
    if not (old.endswith(b"\n") and new.endswith(b"\n")) or b"\0" in old or b"\0" in new:
        return replace_blob_patch(path, old_oid, new_oid, new)
    a, b = old.split(b"\n")[:-1], new.split(b"\n")[:-1]
    limit = min(len(a), len(b))
    same_head = 0
    while same_head < limit and a[same_head] == b[same_head]:
        same_head += 1
    same_tail = 0
    while same_tail < limit - same_head and a[-1 - same_tail] == b[-1 - same_tail]:
        same_tail += 1
    start = max(0, same_head - _CONTEXT)
    a_mid, b_mid = len(a) - same_tail, len(b) - same_tail
    after = a[a_mid : a_mid + _CONTEXT]
    lines = [b" " + ln for ln in a[start:same_head]]
    lines += [b"-" + ln for ln in a[same_head:a_mid]]
    lines += [b"+" + ln for ln in b[same_head:b_mid]]
    lines += [b" " + ln for ln in after]
    a_count, b_count = a_mid + len(after) - start, b_mid + len(after) - start
    names = f"{_quote('a/' + path)} {_quote('b/' + path)}"
    head = (
        f"diff --git {names}\nindex {old_oid}..{new_oid}\n"
        f"--- {_quote('a/' + path)}\n+++ {_quote('b/' + path)}\n"
        f"@@ -{_start(start, a_count)},{a_count} +{_start(start, b_count)},{b_count} @@\n"
    )
    return head.encode("utf-8", "surrogateescape") + b"\n".join(lines) + b"\n"


def _start(start: int, count: int) -> int:
    return start + 1 if count else start


def replace_blob_patch(path: str, old_oid: str, new_oid: str, new_data: bytes) -> bytes:
    """A binary patch that replaces the blob ``old_oid`` at ``path`` with ``new_data``.

    ``git apply`` checks both ids, so the change is exact whatever the
    content (no text-diff corner cases) and conflicts only if ``path`` is not
    ``old_oid`` any more.
    """
    head = (
        f"diff --git {_quote('a/' + path)} {_quote('b/' + path)}\n"
        f"index {old_oid}..{new_oid}\n"
        "GIT binary patch\n"
    )
    return head.encode("utf-8", "surrogateescape") + _literal(new_data)


def _literal(data: bytes) -> bytes:
    packed = zlib.compress(data, 1)
    whole = len(packed) // 52 * 52
    encoded = base64.b85encode(packed[:whole])
    out = [b"literal %d\n" % len(data)]
    out += [b"z" + encoded[pos : pos + 65] + b"\n" for pos in range(0, len(encoded), 65)]
    rest = packed[whole:]
    if rest:
        size = len(rest)
        tag = chr(ord("A") + size - 1) if size <= 26 else chr(ord("a") + size - 27)
        out.append(tag.encode() + base64.b85encode(rest + b"\0" * (-size % 4)) + b"\n")
    out.append(b"\n")
    return b"".join(out)


def _quote(name: str) -> str:
    if not re.search(r'[\x00-\x1f"\\\x7f]|[^\x00-\x7f]', name):
        return name
    out = []
    for byte in name.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'
