"""A node daemon that registers under another name than its certificate's, as root on a node could
try: the daemon's own check of its certificate against its name is skipped (the impostor controls its
own code), so only its parent and the master can refuse it.

``python -m tests.cluster.impostor CERT PARENT CLAIMED_NAME BIN_ROOT``: exits 1 with the refusal in one
line on stderr (as ``gproc s`` does), 0 if it was admitted (and then stops), 3 if nothing was decided.
"""

from __future__ import annotations

import asyncio
import sys

from gproc import certs, daemon, daemonconfig


async def impersonate(cert: str, parent: str, claimed: str, bin_root: str) -> int:
    (holder,) = certs.cert_names(certs.load_cert(cert))
    cfg = daemonconfig.node(parent=parent, node_id="77", name=holder, cert=cert, bin_root=bin_root, node_socket="none")
    node = daemon.build_node(cfg)
    assert node.identity is not None
    node.cfg.name = node.identity.name = claimed  # the lie: statements are signed for the claimed name
    await node.start()
    try:
        async with asyncio.timeout(30):
            done = asyncio.ensure_future(node.stopped.wait())
            joined = asyncio.ensure_future(node.registered.wait())
            await asyncio.wait([done, joined], return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            joined.cancel()
    except TimeoutError:
        await node.stop()
        return 3
    admitted = node.registered.is_set()
    await node.stop()
    if node.fatal is not None:
        print(f"gproc: {node.fatal}", file=sys.stderr)
        return 1
    return 0 if admitted else 3


if __name__ == "__main__":
    sys.exit(asyncio.run(impersonate(*sys.argv[1:5])))
