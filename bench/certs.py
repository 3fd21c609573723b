"""What per-node certificates cost a local cluster's start: ``gproc up --local N`` with the shared
credential against ``--certs`` (each node its own certificate, checked by its parent and, signed
statement and all, by the master), alternating, same commit, same machine.

    python bench/certs.py [--nodes 256] [--fanout 16] [--pairs 3] [--no-write]

``up`` is the wall time of ``gproc.local.up`` until every node is registered; with ``--certs`` it
includes issuing N+1 certificates, which is also timed alone (``issue``) so that what is left is the
cost of the checks and the per-node TLS contexts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from gproc import certs, credential, local
from results import machine, write_section


def start(n: int, fanout: int, with_certs: bool) -> float:
    d = tempfile.mkdtemp(prefix="gpb-", dir="/tmp")
    sock = os.path.join(d, "g")
    try:
        t0 = time.perf_counter()
        local.up(n, fanout=fanout, socket=sock, certs=with_certs)
        took = time.perf_counter() - t0
        local.down(sock)
        return took
    finally:
        shutil.rmtree(d, ignore_errors=True)


def issuing(n: int) -> float:
    d = tempfile.mkdtemp(prefix="gpb-", dir="/tmp")
    try:
        ca = credential.keygen(os.path.join(d, "cluster.key"))
        t0 = time.perf_counter()
        for i in range(n + 1):
            certs.issue(ca, f"node{i}", os.path.join(d, "certs"))
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def per_node_cpu(runs: int = 200) -> dict[str, float]:
    """Milliseconds of each check a registration costs, in this process (no network, no other
    daemons): what the load of a shared machine cannot blur."""
    d = tempfile.mkdtemp(prefix="gpb-", dir="/tmp")
    try:
        ca = credential.keygen(os.path.join(d, "cluster.key"))
        key, cert, ca_cert = certs.issue(ca, "node0", d)
        ident = certs.node_identity(cert, key, ca_cert, "node0")
        when, sig = ident.sign("0", "i", "master")
        args = {"name": "node0", "id": "0", "instance": "i", "cert": ident.cert_der, "sig": sig, "when": when}

        def ms(f: object) -> float:
            t0 = time.perf_counter()
            for _ in range(runs):
                f()  # type: ignore[operator]
            return (time.perf_counter() - t0) / runs * 1000

        return {
            "node: load and check its own certificate": ms(lambda: certs.node_identity(cert, key, ca_cert, "node0")),
            "node: sign its attach statement": ms(lambda: ident.sign("0", "i", "master")),
            "node: its client TLS context": ms(lambda: credential.client_context(key, cert, ca_cert)),
            "shared: one client TLS context (per worker process)": ms(lambda: credential.client_context(ca)),
            "master: check a registration (chain, name, statement)": ms(
                lambda: certs.check_attach(ident.ca, frozenset(), args, "master")
            ),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--fanout", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    where = machine(load=True)
    rows, shared, own = [], [], []
    for p in range(a.pairs):
        order = (False, True) if p % 2 == 0 else (True, False)
        got = {flag: start(a.nodes, a.fanout, flag) for flag in order}
        shared.append(got[False])
        own.append(got[True])
        first = "certs first" if order[0] else "shared first"
        rows.append(f"| {p + 1} | {first} | {got[False]:.2f} | {got[True]:.2f} |")
        print(rows[-1], flush=True)
    issue = issuing(a.nodes)
    cpu = per_node_cpu()
    ms, mc = statistics.mean(shared), statistics.mean(own)
    text = (
        f"## Per-node certificates: local cluster start, N = {a.nodes}, fanout {a.fanout}\n\n"
        f"`python bench/certs.py --nodes {a.nodes} --fanout {a.fanout} --pairs {a.pairs}` ({where}).\n"
        "Seconds until every node is registered (`gproc.local.up`), the shared credential and `--certs`\n"
        "alternating.\n\n"
        "| pair | order | shared credential | per-node certificates |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n| mean | | {ms:.2f} | {mc:.2f} ({(mc / ms - 1) * 100:+.0f} %) |\n\n"
        f"Issuing the {a.nodes + 1} certificates alone: {issue:.2f} s; what is left of the difference,"
        f" {mc - ms - issue:.2f} s ({(mc - ms - issue) / a.nodes * 1000:.1f} ms a node), is the checks"
        " (TLS chain at the parent, certificate and signed statement at the master, the node's own at start)"
        " and one pair of TLS contexts per node instead of one per worker process (leaves make only the"
        " client one). The machine is shared with other sessions: its load swings the start times by"
        " a factor of 2-5 from run to run, so the difference is a rough figure; the same work measured"
        " in one process, 200 times each (milliseconds):\n\n"
        "| per registration | ms |\n|---|---|\n" + "".join(f"| {k} | {v:.2f} |\n" for k, v in cpu.items())
    )
    print(text)
    if not a.no_write:
        write_section("certs", text)


if __name__ == "__main__":
    main()
