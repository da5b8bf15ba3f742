"""Length-framed binary fields: LEB128 varints and a strict reader.

Both the update stream and the file format frame their fields with unsigned
LEB128 varints of at most five bytes (values below ``2**35``).  The reader is
strict, so that every valid stream has exactly one encoding: a field that
runs past the end, a varint that is not minimal or longer than five bytes,
and trailing bytes are errors, each a one-line message of ``error``'s type.
"""

from __future__ import annotations

__all__ = ["VARINT_LIMIT", "encode_varint", "ByteReader"]

#: varints hold values below this (five bytes of 7 bits)
VARINT_LIMIT = 1 << 35


def encode_varint(n: int) -> bytes:
    """LEB128: 7 bits per byte, high bit set on all but the last byte.

    Raises:
        ValueError: ``n`` is negative or does not fit five bytes.
    """
    if not 0 <= n < VARINT_LIMIT:
        raise ValueError(f"value {n} does not fit a 5-byte varint")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class ByteReader:
    """Reads the fields of ``data`` in order; errors name ``what`` and the field.

    Args:
        data: the bytes to read
        what: the name of the whole in messages ("header", "update stream")
        error: the exception type raised (a ValueError subclass)
    """

    def __init__(self, data: bytes, what: str, error: type[ValueError] = ValueError):
        self.data, self.pos, self.what, self.error = bytes(data), 0, what, error

    def fail(self, problem: str) -> ValueError:
        """The error to raise for ``problem`` (``corrupted <what>: <problem>``)."""
        return self.error(f"corrupted {self.what}: {problem}")

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            left = len(self.data) - self.pos
            raise self.fail(
                f"{field} runs past its end (truncated: {n} byte(s) needed at "
                f"offset {self.pos}, {left} left)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, field: str) -> int:
        return self.take(1, field)[0]

    def varint(self, field: str) -> int:
        n = 0
        for shift in range(0, 35, 7):
            byte = self.byte(field)
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise self.fail(f"{field} is not a minimal varint")
                return n
        raise self.fail(f"{field} is not a varint (longer than 5 bytes)")

    def str8(self, field: str) -> str:
        """An ASCII string after its one-byte length."""
        raw = self.take(self.byte(field), field)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{field} is not ASCII") from None

    def end(self) -> None:
        """Fail unless every byte was read."""
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing byte(s)")
