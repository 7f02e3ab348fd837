"""A headless Chromium to look at HTML as a person would: its DOM after layout, a screenshot's pixels,
the printed PDF. Tests using it are marked `browser` and skip, saying why, where no Chromium is installed
(Debian: `apt-get install chromium`)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no headless Chromium to render the HTML report: install Debian's `chromium`")
    return found


def _run(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", *flags, page.as_uri()],
                          check=True, capture_output=True, text=True, timeout=180)


def dump_dom(page: Path) -> str:
    return _run(page, "--dump-dom").stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600) -> list[list[tuple[int, int, int]]]:
    """The page's first `height` pixels as rows of RGB."""
    _run(page, f"--screenshot={png}", f"--window-size={width},{height}")
    return decode_png(png.read_bytes())


def print_pdf(page: Path, pdf: Path) -> bytes:
    _run(page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    return pdf.read_bytes()


def colours(pixels: list[list[tuple[int, int, int]]], top: int = 0, bottom: int | None = None) -> Counter[str]:
    """How many pixels of each colour (#rrggbb) rows top..bottom hold."""
    return Counter(f"#{r:02x}{g:02x}{b:02x}" for row in pixels[top:bottom] for r, g, b in row)


def decode_png(data: bytes) -> list[list[tuple[int, int, int]]]:
    """8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) to rows of RGB."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, chunks, header = 8, [], b""
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        at += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, "only 8-bit RGB(A), non-interlaced"
    step = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * step
    rows: list[list[tuple[int, int, int]]] = []
    previous = bytearray(stride)
    at = 0
    for _ in range(height):
        kind, line = raw[at], bytearray(raw[at + 1:at + 1 + stride])
        at += 1 + stride
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up = previous[i]
            corner = previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append([(line[i], line[i + 1], line[i + 2]) for i in range(0, stride, step)])
        previous = line
    return rows
