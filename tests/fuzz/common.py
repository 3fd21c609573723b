"""What every fuzz harness shares. A harness (``fuzz_X.py``) has ``one(data)``, called with each
input, which must return or raise one of its target's documented errors; ``run.py`` fuzzes it. A harness
whose input is msgpack also has ``mutate`` (``mutate_structured``), so mutations keep it msgpack."""

from __future__ import annotations

import random

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


_SHAPES = (None, True, 0, -1, 1, 2**31, 2**64 - 1, -(2**63), 1.5, float("nan"), "", "x", b"", [], {})


def mutate_value(v: object, rnd: random.Random) -> object:
    """A nearby structure: one element, key or value of ``v`` (recursively) changed."""
    if isinstance(v, list) and v and rnd.random() < 0.7:
        i = rnd.randrange(len(v))
        choice = rnd.randrange(4)
        if choice == 0:
            return v[:i] + v[i + 1 :]  # drop one (odd lengths, missing fields)
        if choice == 1:
            return [*v[: i + 1], v[i], *v[i + 1 :]]  # repeat one
        return [*v[:i], mutate_value(v[i], rnd), *v[i + 1 :]]
    if isinstance(v, dict) and v and rnd.random() < 0.8:
        k = rnd.choice(list(v))
        out = dict(v)
        if rnd.random() < 0.2:
            del out[k]
        else:
            out[k] = mutate_value(v[k], rnd)
        return out
    if isinstance(v, int) and not isinstance(v, bool) and rnd.random() < 0.5:
        return v + rnd.choice((-1, 1, -v, 1000, 10**7))
    return rnd.choice(_SHAPES)


def mutate_structured(data: bytes, max_size: int, seed: int, prefix: int = 0) -> bytes:
    """libFuzzer's byte mutations, or (half the time, for an input that is msgpack after ``prefix``
    bytes) a structural one: a field dropped, repeated or given another type or value. Byte flips
    alone rarely keep msgpack well formed, so they reach few of a decoder's checks."""
    import atheris

    rnd = random.Random(seed)
    value = structured(data[prefix:]) if rnd.random() < 0.5 else None
    if value is None:
        return bytes(atheris.Mutate(data, max_size))
    try:
        out = data[:prefix] + msgpack.packb(mutate_value(value, rnd), use_bin_type=True)
    except (OverflowError, ValueError):  # an integer pushed past 64 bits
        return bytes(atheris.Mutate(data, max_size))
    return out[:max_size]
