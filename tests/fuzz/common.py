"""What every fuzz harness shares. A harness (``fuzz_X.py``) has ``one(data)``, called with each
input, which must return or raise one of its target's documented errors; ``run.py`` fuzzes it."""

from __future__ import annotations

import msgpack


def structured(data: bytes) -> object:
    """An input as msgpack, or None when it is not (so structure-aware targets see nearby structures)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # garbage is an input the target is not given
        return None


def text(data: bytes) -> str:
    """An input as text, as a command line or a request would carry it."""
    return data.decode("utf-8", "surrogateescape")
