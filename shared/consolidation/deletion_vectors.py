"""Deletion vectors (Delta protocol, "Deletion Vector Format"): which rows of a data file are deleted.

A descriptor is inline (`storageType` `i`: the Z85-encoded bitmap) or points into a file
(`u`, `p`) at `offset`: a 4-byte big-endian size, the bitmap, a CRC-32. The bitmap is a
RoaringBitmapArray: magic 1681511377 (little-endian int32), the number of 32-bit bitmaps
(int64), then per bitmap its high 32 bits (int32) and a portable-format Roaring bitmap.
"""

from __future__ import annotations

import struct

import numpy as np

from shared.delta.log import deletion_vector_path, z85_decode

MAGIC = 1681511377
_SERIAL_COOKIE = 12347
_SERIAL_COOKIE_NO_RUNCONTAINER = 12346
_NO_OFFSET_THRESHOLD = 4


class DeletionVectorError(ValueError):
    """Raised when a deletion vector is malformed."""


def deleted_rows(descriptor: dict, read_file) -> np.ndarray:
    """The deleted row indexes of a data file, sorted.

    Args:
        descriptor: the `deletionVector` of an add action.
        read_file: reads a table-relative (or absolute, `p`) path into bytes.

    Raises:
        DeletionVectorError: the bytes do not decode; FileNotFoundError from `read_file`.
    """
    if descriptor.get("storageType") == "i":
        data = z85_decode(descriptor["pathOrInlineDv"])
    else:
        path = deletion_vector_path(descriptor)
        blob = read_file(path)
        offset = int(descriptor.get("offset") or 0)
        size = int(descriptor["sizeInBytes"])
        if len(blob) < offset + 4 + size:
            raise DeletionVectorError(f"deletion vector file {path} is shorter than offset {offset} + {size} bytes")
        (stored,) = struct.unpack_from(">i", blob, offset)
        if stored != size:
            raise DeletionVectorError(f"deletion vector in {path} at {offset} says {stored} bytes, the log {size}")
        data = blob[offset + 4: offset + 4 + size]
    return decode_bitmap_array(data)


def decode_bitmap_array(data: bytes) -> np.ndarray:
    """Decode a serialized RoaringBitmapArray into sorted uint64 row indexes."""
    try:
        (magic,) = struct.unpack_from("<i", data, 0)
        if magic != MAGIC:
            raise DeletionVectorError(f"not a deletion vector (magic {magic}, expected {MAGIC})")
        (count,) = struct.unpack_from("<q", data, 4)
        pos, parts = 12, []
        for _ in range(count):
            (high,) = struct.unpack_from("<I", data, pos)
            low, pos = _decode_portable(data, pos + 4)
            parts.append((np.uint64(high) << np.uint64(32)) | low.astype(np.uint64))
    except struct.error as err:
        raise DeletionVectorError(f"deletion vector is truncated ({err})") from err
    if not parts:
        return np.zeros(0, dtype=np.uint64)
    return np.sort(np.concatenate(parts))


def _decode_portable(data: bytes, pos: int) -> tuple[np.ndarray, int]:
    """One portable-format 32-bit Roaring bitmap at `pos`; returns its values and the end position."""
    (cookie,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if cookie & 0xFFFF == _SERIAL_COOKIE:
        size = (cookie >> 16) + 1
        run_flags = data[pos: pos + (size + 7) // 8]
        pos += (size + 7) // 8
        has_offsets = size >= _NO_OFFSET_THRESHOLD
    elif cookie == _SERIAL_COOKIE_NO_RUNCONTAINER:
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        run_flags = b""
        has_offsets = True
    else:
        raise DeletionVectorError(f"unknown Roaring cookie {cookie}")
    header = struct.unpack_from(f"<{2 * size}H", data, pos)
    pos += 4 * size
    if has_offsets:
        pos += 4 * size
    values = []
    for i in range(size):
        key, cardinality = header[2 * i], header[2 * i + 1] + 1
        is_run = bool(run_flags) and bool(run_flags[i // 8] & (1 << (i % 8)))
        if is_run:
            (runs,) = struct.unpack_from("<H", data, pos)
            pairs = np.frombuffer(data, dtype="<u2", count=2 * runs, offset=pos + 2).astype(np.uint32)
            pos += 2 + 4 * runs
            low = np.concatenate([np.arange(s, s + n + 1, dtype=np.uint32) for s, n in pairs.reshape(-1, 2)]) \
                if runs else np.zeros(0, dtype=np.uint32)
        elif cardinality <= 4096:
            low = np.frombuffer(data, dtype="<u2", count=cardinality, offset=pos).astype(np.uint32)
            pos += 2 * cardinality
        else:
            words = np.frombuffer(data, dtype="<u8", count=1024, offset=pos)
            pos += 8192
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")
            low = np.flatnonzero(bits).astype(np.uint32)
        values.append((np.uint32(key) << np.uint32(16)) | low)
    if not values:
        return np.zeros(0, dtype=np.uint32), pos
    return np.concatenate(values), pos
