"""Where one user's rights end on a node: a job's working directory is one its user could enter (and
create) itself, never one the root daemon's rights reached."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import ClusterShell.NodeSet  # noqa: F401  (loaded before as_user drops to a user who cannot read root's site-packages)
import pytest
from tests.cluster.users import NOBODY, as_user, needs_root
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster
from gproc import bundle as _bundle  # noqa: F401  (loaded before as_user drops to a user who cannot read root's site-packages)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def c2() -> Iterator[LocalCluster]:
    c, d = start_cluster(2, 2)
    os.chmod(os.path.dirname(c.socket), 0o755)  # let another user reach the master's socket
    try:
        yield c
    finally:
        stop_cluster(c, d)


def pwd_as(c: LocalCluster, uid: int, cwds: list[str]) -> dict[str, Any]:
    """What ``pwd`` says for a ``-localbin`` job of ``uid`` asked to start in each of ``cwds``."""

    def run() -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            k, out = Cluster(c.socket), {}
            for cwd in cwds:
                job = await k.exec(["pwd"], include="node1", cwd=cwd, localbin=True)
                async for ev in job:
                    data = getattr(ev, "data", None)
                    if data is not None:
                        out[cwd] = (data.decode() if isinstance(data, bytes) else data).strip()
            return out

        return asyncio.run(go())

    return as_user(uid, run)  # type: ignore[no-any-return]


@needs_root
def test_workdir_is_entered_and_made_as_the_user(c2: LocalCluster) -> None:
    closed = tempfile.mkdtemp(prefix="gpt-closed-", dir="/tmp")  # root's, mode 0700
    open_ = tempfile.mkdtemp(prefix="gpt-open-", dir="/tmp")
    os.chmod(open_, 0o1777)
    try:
        want_made = os.path.join(open_, "made", "deeper")
        got = pwd_as(c2, NOBODY, [closed, os.path.join(closed, "new"), want_made])
        assert "exception" not in got, got
        # a directory the user cannot enter or create is not given to the job: it starts in /
        assert got[closed] == "/" and got[os.path.join(closed, "new")] == "/", got
        assert not os.path.exists(os.path.join(closed, "new")), "root made a directory for another user"
        # one the user may create is made, and is the user's own
        assert got[want_made] == want_made, got
        assert os.stat(want_made).st_uid == NOBODY and os.stat(os.path.join(open_, "made")).st_uid == NOBODY
    finally:
        shutil.rmtree(closed)
        shutil.rmtree(open_)
