"""A misbehaving peer's view: what a daemon sent before it closed the connection."""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from gproc import wire


def read_to_close(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the other end sends until it closes (a reset counts as closing); a daemon that
    keeps the connection open past ``timeout`` fails the test (TimeoutError is not caught)."""
    s.settimeout(timeout)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except ssl.SSLError as e:
        if isinstance(e, ssl.SSLWantReadError):
            raise
    return got


def messages(data: bytes) -> list[dict[str, Any]]:
    """The whole frames in ``data``, decoded."""
    out, i = [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        if i + 4 + n > len(data):
            break
        out.append(wire.unpack(data[i + 4 : i + 4 + n]))
        i += 4 + n
    return out
