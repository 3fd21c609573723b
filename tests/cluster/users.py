"""Acting as another user in a test: a forked child that drops to an unprivileged uid (root only)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_user(uid: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child that has dropped to ``uid`` (the kernel then reports that uid);
    its JSON-able result, or ``{"exception": repr}``."""
    # once another user, the child cannot read this Python's packages (root's): what the client
    # imports only when it needs it (the ELF reader, node sets) is imported before the fork
    import ClusterShell.NodeSet  # noqa: F401
    import elftools.elf.dynamic
    import elftools.elf.elffile
    import elftools.elf.segments  # noqa: F401

    import gproc.bundle
    import gproc.nodespec  # noqa: F401

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = json.dumps(fn())
        except BaseException as e:
            out = json.dumps({"exception": repr(e)})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)
