"""The protobuf wire format, read and written by hand: varints, tags, fields, length-delimited data.

The one codec for every protobuf the package handles without the generated modules: the
Kubernetes object reader (:mod:`snapshot_tools.objects`), the ``mvccpb.KeyValue`` value splice
(:mod:`snapshot_tools.mvcc`), the KMS v2 ``EncryptedObject`` template
(:mod:`snapshot_tools.providers.kmsv2`) and the snapshot scan's in-place key read.

Error convention: every malformed input raises :class:`WireError` (a ``ValueError``) with a
short reason ("truncated varint", "field number 0", ...) and no context. Callers translate it
once, at their boundary, into their own error: ``MalformedValue`` for a stored value,
``SnapshotError`` with the byte offset for a snapshot record, ``False`` for a sniff. A varint is
what Go's ``protowire.ConsumeVarint`` accepts: at most 10 bytes, and the 10th byte carries only
bit 63. :func:`field_spans` steps over varint *values* without decoding them (only their
boundaries matter there), so like upb and etcd's generated decoders it does not range-check them.

Reading functions take ``(buf, pos, end)``: ``end`` bounds the message inside a larger buffer,
and nothing is read at or past it. Positions are ints into ``buf``; payloads are returned as
``(start, stop)`` so nothing is copied until a caller slices.

References: ``google.golang.org/protobuf/encoding/protowire/wire.go`` (``ConsumeVarint``,
``ConsumeTag``, ``ConsumeFieldValue``, ``AppendVarint``), https://protobuf.dev/programming-guides/encoding/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmap import mmap

    Buffer = bytes | bytearray | memoryview | mmap

# Wire types (``protowire.VarintType`` ...). Groups (3, 4) are deprecated and never read here.
VARINT = 0
I64 = 1
LEN = 2
I32 = 5

MAX_VARINT_SIZE = 10  # a uint64 in 7-bit groups
_FIXED_SIZES = {I64: 8, I32: 4}


class WireError(ValueError):
    """The bytes are not well-formed protobuf; the message is the reason, without context."""


# -- writing ----------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """``n`` (0 <= n < 2**64) as a minimal base-128 varint, as Go's ``AppendVarint`` writes it.

    Raises:
        ValueError: ``n`` is negative or does not fit 64 bits (encode int64s as ``n & (2**64 - 1)``).
    """
    if not 0 <= n < 1 << 64:
        raise ValueError(f"varint must be in [0, 2**64), got {n}")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(number: int, wire: int) -> int:
    """The tag of field ``number`` with wire type ``wire`` (one byte when ``number`` < 16)."""
    return number << 3 | wire


def encode_len(number: int, payload: bytes) -> bytes:
    """A whole length-delimited field: tag, length, ``payload``."""
    return encode_varint(tag(number, LEN)) + encode_varint(len(payload)) + payload


# -- reading ----------------------------------------------------------------------------------


def decode_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """``(value, position after it)`` of the varint at ``pos``.

    Raises:
        WireError: truncated at ``end``, longer than 10 bytes, or more than 64 bits.
    """
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if shift == 63 and b > 1:
                raise WireError("varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def skip_varint(buf: Buffer, pos: int, end: int) -> int:
    """The position after the varint at ``pos``, without decoding it (10th byte unchecked).

    Raises:
        WireError: truncated at ``end``, or longer than 10 bytes.
    """
    stop = min(end, pos + MAX_VARINT_SIZE)
    while pos < stop:
        if buf[pos] < 0x80:
            return pos + 1
        pos += 1
    raise WireError("truncated varint" if stop == end else "varint longer than 10 bytes")


def read_len(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """``(start, stop)`` of the length-delimited payload whose length varint is at ``pos``.

    Raises:
        WireError: a bad length varint, or the payload runs past ``end``.
    """
    length, start = decode_varint(buf, pos, end)
    stop = start + length
    if stop > end:
        raise WireError("length runs past the end of the message")
    return start, stop


def read_len_field(buf: Buffer, pos: int, end: int) -> tuple[int, int, int]:
    """``(tag, start, stop)`` of a LEN field whose tag is the one byte at ``pos``.

    The fast path of :func:`read_field` for hand-inlined readers that have already matched a
    one-byte tag (fields 1-15): a one-byte length is read in place.

    Raises:
        WireError: a bad length varint, or the payload runs past ``end``.
    """
    tag_value = buf[pos]
    if pos + 1 < end and buf[pos + 1] < 0x80:
        start = pos + 2
        stop = start + buf[pos + 1]
    else:
        length, start = decode_varint(buf, pos + 1, end)
        stop = start + length
    if stop > end:
        raise WireError("length runs past the end of the message")
    return tag_value, start, stop


def read_field(buf: Buffer, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """Read one field at ``pos``: ``(number, wire type, a, b, next pos)``.

    For LEN fields ``(a, b)`` is the ``[start, stop)`` slice of the payload; for numeric fields
    ``a`` is the value (fixed-width ones little-endian, unsigned) and ``b`` is 0.

    Raises:
        WireError: a bad tag or value, field number 0, a group, or data past ``end``.
    """
    tag_value, pos = decode_varint(buf, pos, end)
    number, wire = tag_value >> 3, tag_value & 7
    if number == 0:
        raise WireError("field number 0")
    if wire == LEN:
        start, stop = read_len(buf, pos, end)
        return number, wire, start, stop, stop
    if wire == VARINT:
        value, pos = decode_varint(buf, pos, end)
        return number, wire, value, 0, pos
    if wire in _FIXED_SIZES:
        stop = pos + _FIXED_SIZES[wire]
        if stop > end:
            raise WireError("truncated fixed-width field")
        return number, wire, int.from_bytes(buf[pos:stop], "little"), 0, stop
    raise WireError(f"unsupported wire type {wire}")


def fields(buf: Buffer, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """Every field of the message in ``buf[pos:end]`` as ``(number, wire type, a, b)``.

    See :func:`read_field` for ``a`` and ``b``.

    Raises:
        WireError: any malformed field.
    """
    out = []
    while pos < end:
        number, wire, a, b, pos = read_field(buf, pos, end)
        out.append((number, wire, a, b))
    return out


def field_spans(buf: Buffer, pos: int, end: int) -> list[tuple[int, int, int]]:
    """``(number, start, stop)`` of every field in ``buf[pos:end]``, tag included.

    Field boundaries only: varint values are stepped over (:func:`skip_varint`), so a message
    the protobuf runtime accepts is split whatever its values hold.

    Raises:
        WireError: a bad tag or length, field number 0, a group, or data past ``end``.
    """
    spans = []
    while pos < end:
        start = pos
        tag_value, pos = decode_varint(buf, pos, end)
        number, wire = tag_value >> 3, tag_value & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == LEN:
            pos = read_len(buf, pos, end)[1]
        elif wire == VARINT:
            pos = skip_varint(buf, pos, end)
        elif wire in _FIXED_SIZES:
            pos += _FIXED_SIZES[wire]
            if pos > end:
                raise WireError("truncated fixed-width field")
        else:
            raise WireError(f"unsupported wire type {wire}")
        spans.append((number, start, pos))
    return spans


def int64(value: int) -> int:
    """A decoded varint read as Go's ``int64`` (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


__all__ = [
    "I32",
    "I64",
    "LEN",
    "MAX_VARINT_SIZE",
    "VARINT",
    "WireError",
    "decode_varint",
    "encode_len",
    "encode_varint",
    "field_spans",
    "fields",
    "int64",
    "read_field",
    "read_len",
    "read_len_field",
    "skip_varint",
    "tag",
]
