"""Parsing ``host``, ``host:port``, ``[v6]:port`` and bare IPv6 addresses."""

from __future__ import annotations

from dataclasses import dataclass

from gproc.errors import UsageError

DEFAULT_PORT = 6666


@dataclass(frozen=True)
class Address:
    """A TCP endpoint. ``host`` is a name, an IPv4 or an IPv6 literal (without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """Parse an address; a bare IPv6 literal (``::1``) takes the default port."""
    t = text.strip()
    if not t:
        raise UsageError("empty address")
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not host:
            raise UsageError(f"bad address {text!r}: unclosed '['")
        if rest and not rest.startswith(":"):
            raise UsageError(f"bad address {text!r}")
        port_s = rest[1:] if rest else ""
    elif t.count(":") == 1:
        host, _, port_s = t.partition(":")
    else:  # a name, an IPv4 literal or a bare IPv6 literal
        host, port_s = t, ""
    if not host or any(c.isspace() for c in host):
        raise UsageError(f"bad address {text!r}")
    if not port_s:
        return Address(host, default_port)
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"bad port in address {text!r}")
    return Address(host, int(port_s))


def parse_address_list(text: str, default_port: int = DEFAULT_PORT) -> list[Address]:
    """Comma- or space-separated addresses (a parent and its fallbacks)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise UsageError("empty address list")
    return [parse_address(p, default_port) for p in parts]
