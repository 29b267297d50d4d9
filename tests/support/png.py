"""Read the pixels of a PNG with the standard library (8-bit RGB or RGBA, not interlaced).

Enough to tell a browser's screenshot from a blank page: Chromium writes
exactly this kind of PNG.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: channels per colour type: 2 is RGB, 6 is RGBA
CHANNELS = {2: 3, 6: 4}


@dataclass
class Image:
    width: int
    height: int
    #: one (r, g, b) per pixel, row by row
    pixels: list[tuple[int, int, int]]

    def colours(self) -> Counter[tuple[int, int, int]]:
        return Counter(self.pixels)

    def variance(self) -> float:
        """The variance of the pixels' brightness (0 for a blank page)."""
        values = [r + g + b for r, g, b in self.pixels]
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / len(values)

    def near(self, colour: tuple[int, int, int], tolerance: int = 12) -> int:
        """How many pixels are within ``tolerance`` of ``colour`` in every channel."""
        return sum(
            n
            for c, n in self.colours().items()
            if all(abs(a - b) <= tolerance for a, b in zip(c, colour, strict=True))
        )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(kind: int, line: bytearray, prior: bytearray, bpp: int) -> bytearray:
    if kind == 0:
        return line
    if kind == 2:
        return bytearray((x + y) & 0xFF for x, y in zip(line, prior, strict=True))
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        if kind == 1:
            out[i] = (out[i] + left) & 0xFF
        elif kind == 3:
            out[i] = (out[i] + ((left + prior[i]) >> 1)) & 0xFF
        elif kind == 4:
            up_left = prior[i - bpp] if i >= bpp else 0
            out[i] = (out[i] + _paeth(left, prior[i], up_left)) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")
    return out


def read_png(path: Path) -> Image:
    data = path.read_bytes()
    if not data.startswith(SIGNATURE):
        raise ValueError(f"{path} is not a PNG")
    pos, header, chunks = len(SIGNATURE), b"", []
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
    bpp = CHANNELS[colour]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    prior = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prior, bpp)
        pixels += zip(line[0::bpp], line[1::bpp], line[2::bpp], strict=True)
        prior = line
    return Image(width, height, pixels)
