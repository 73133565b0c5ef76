"""Framing for stream transports: a 4-byte big-endian length, then one message body (no I/O)."""

from __future__ import annotations

import struct
from collections import deque

from p2pfl.wire.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.wire.limits import MAX_FRAME_BYTES

_HEADER = struct.Struct(">I")  # 4-byte big-endian body length


def frame(payload: bytes) -> bytes:
    """Length-prefix one message for a stream transport."""
    if len(payload) > MAX_FRAME_BYTES:
        raise LocalProtocolError("oversized", f"frame body of {len(payload)} bytes; "
                                              f"MAX_FRAME_BYTES is {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(payload)) + bytes(payload)


class FrameDecoder:
    """Splits a byte stream into frame bodies. Lengths are checked when the header arrives, so an
    oversized frame is refused before any of its body is buffered; after that the stream is dead
    (every later feed() raises again) because its framing can no longer be trusted."""

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._header = bytearray()
        self._body: bytearray | None = None  # None while reading a header
        self._need = 0  # body bytes still missing
        self._frames: deque[bytes] = deque()
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Add received bytes; complete frames become available from next_frame()."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        while view:
            if self._body is None:
                take = 4 - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < 4:
                    return
                (n,) = _HEADER.unpack(self._header)
                self._header.clear()
                if n > self._max:
                    self._error = RemoteProtocolError(
                        "oversized", f"peer announced a {n}-byte frame; the limit is {self._max}")
                    raise self._error
                self._body, self._need = bytearray(), n
            take = min(self._need, len(view))
            self._body += view[:take]
            view = view[take:]
            self._need -= take
            if self._need == 0:
                self._frames.append(bytes(self._body))
                self._body = None

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if more bytes are needed."""
        return self._frames.popleft() if self._frames else None

    def feed_eof(self) -> None:
        """The stream ended; raises if it ended inside a frame (a truncated frame is "malformed")."""
        if self._header or self._body is not None:
            got = len(self._header) if self._body is None else len(self._body)
            what = "header" if self._body is None else "body"
            want = 4 if self._body is None else len(self._body) + self._need
            raise RemoteProtocolError("malformed", f"stream ended inside a frame {what}: got {got} of {want} bytes")
