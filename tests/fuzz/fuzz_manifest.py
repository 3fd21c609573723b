"""Bundle manifests as the master and the nodes validate them (``Shipper.check`` →
``store.parse_manifest``), from a msgpack input. Allowed: StagingError."""

from __future__ import annotations

import posixpath

from common import mutate_structured, structured

from gproc.errors import StagingError
from gproc.services.ship import Shipper


def one(data: bytes) -> None:
    bundle = structured(data)
    try:
        entries = Shipper.check(bundle)
    except StagingError:
        return
    for e in entries:  # what validation promises the stager
        assert e.path.startswith("/") and posixpath.normpath(e.path) == e.path, e
        assert e.kind in "fld", e
        if e.kind == "l":
            assert not e.target.startswith("/"), e


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate_structured(data, max_size, seed)
