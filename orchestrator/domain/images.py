"""Disk image formats, told from the content and never from a file name (spec §24)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

ImageFormat = Literal["qcow2", "iso", "raw"]
QCOW2_MAGIC = b"QFI\xfb"
ISO_MAGIC_OFFSET, ISO_MAGIC = 0x8001, b"CD001"  # ISO 9660 primary volume descriptor


def detect_format(head: bytes) -> ImageFormat:
    """The format of an image from its first 36 KiB (fewer bytes: what can be told)."""
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    if head[ISO_MAGIC_OFFSET:ISO_MAGIC_OFFSET + len(ISO_MAGIC)] == ISO_MAGIC:
        return "iso"
    return "raw"


def file_format(path: Path) -> ImageFormat:
    with path.open("rb") as f:
        return detect_format(f.read(ISO_MAGIC_OFFSET + len(ISO_MAGIC)))
