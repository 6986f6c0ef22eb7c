"""pinba2's version-1 datagram framing: an LZ4-compressed Pinba request.

A v1 datagram is a 4-byte header followed by the payload:

- byte 0: ``0x10``: version 1 in the high nibble; the low nibble holds flag
  bits 8-11, all zero;
- byte 1: flag bits 0-7; bit 0 (``FLAG_LZ4``) means the payload is an LZ4
  *block* (no LZ4 frame, no size prefix);
- bytes 2-3: the uncompressed length, big-endian (pinba2 ignores it).

A classic (v0) datagram is the bare protobuf message, which always starts
with the hostname key ``0x0a``: the first byte's high nibble tells them apart.
pinba2 built with LZ4 accepts v1; pinba_engine and pinba2 built without LZ4
drop it. Compressing needs the optional ``lz4`` package (``pip install lz4``).
"""

from __future__ import annotations

__all__ = [
    "FLAG_LZ4",
    "HEADER_SIZE",
    "LZ4_AVAILABLE",
    "MAX_UNCOMPRESSED",
    "FramingError",
    "LZ4UnavailableError",
    "compress",
    "unframe",
]

try:
    import lz4.block as _lz4_block  # type: ignore[import-untyped]  # lz4 ships no type hints
except ImportError:  # the optional extra is not installed
    _lz4_block = None

#: Whether the ``lz4`` package is importable, so that ``compress`` works.
LZ4_AVAILABLE = _lz4_block is not None

HEADER_SIZE = 4
VERSION_1 = 0x10
FLAG_LZ4 = 0x01
#: The largest request a v1 datagram carries: the header's length field has
#: 16 bits, and pinba2 decompresses into a 64 KiB buffer.
MAX_UNCOMPRESSED = 0xFFFF


class FramingError(ValueError):
    """A datagram that is neither a classic request nor a readable v1 frame."""


class LZ4UnavailableError(FramingError):
    """A well-framed LZ4 datagram, unreadable here because the ``lz4`` package is missing."""


def compress(request: bytes) -> bytes:
    """The v1 datagram carrying ``request`` (an encoded Pinba request) LZ4-compressed.

    Raises ValueError when ``request`` is longer than ``MAX_UNCOMPRESSED``
    bytes, and RuntimeError when the ``lz4`` package is not installed.
    """
    if _lz4_block is None:
        raise RuntimeError("LZ4 framing needs the lz4 package: pip install lz4")
    size = len(request)
    if size > MAX_UNCOMPRESSED:
        raise ValueError(
            f"request: {size} bytes is more than a v1 datagram carries ({MAX_UNCOMPRESSED})"
        )
    header = bytes((VERSION_1, FLAG_LZ4, size >> 8, size & 0xFF))
    return header + _lz4_block.compress(request, store_size=False)


def unframe(datagram: bytes) -> bytes:
    """The encoded Pinba request a datagram carries, decompressed when it is LZ4.

    A classic datagram is returned as it is. Raises ``FramingError`` for an
    unknown version or flag, a truncated header, a payload that does not
    decompress, or (``LZ4UnavailableError``) an LZ4 datagram when the ``lz4``
    package is not installed.
    """
    data = bytes(datagram)
    if not data or data[0] >> 4 == 0:
        return data
    version = data[0] >> 4
    if version != 1:
        raise FramingError(f"unknown datagram version {version} (first byte 0x{data[0]:02x})")
    if len(data) < HEADER_SIZE:
        raise FramingError(f"v1 datagram of {len(data)} bytes is shorter than its header")
    flags = (data[0] & 0x0F) << 8 | data[1]
    if flags & ~FLAG_LZ4:
        raise FramingError(f"v1 datagram with unknown flags 0x{flags:03x}")
    payload = data[HEADER_SIZE:]
    if not flags & FLAG_LZ4:
        return payload
    if _lz4_block is None:
        raise LZ4UnavailableError("LZ4 datagram, but the lz4 package is not installed")
    try:
        return _lz4_block.decompress(payload, uncompressed_size=MAX_UNCOMPRESSED + 1)
    except Exception as error:  # lz4.block.LZ4BlockError and the like
        raise FramingError(f"LZ4 payload does not decompress: {error}") from None
