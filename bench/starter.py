"""Before and after: a worker process hosting hundreds of nodes starts programs through a starter.

Starting a program costs its parent work for every descriptor it holds (the kernel copies the table
into the child, ``exec`` closes every entry again): a local cluster's worker hosting 625 nodes holds
~2,000 sockets. ``platform.Starter`` hands the start to a small process holding five descriptors
(``gproc.spawnd``). This starts the same local cluster with the starter (gproc's default:
``platform.STARTER_ABOVE`` descriptors) and without it (``starter_above=-1``), alternating
(``--rounds`` times), and times ``/bin/true`` with ``-localbin`` on every node (medians of ``--runs``
after a warm-up), the machine's CPU per launch, and the no-op round trip.

    python bench/starter.py [--n 10000] [--fanout 16] [--rounds 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime

from launch import gproc_source
from results import machine, publish
from workers import medians, one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--fanout", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="times each setting is started, alternating")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pings", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from gproc import platform
    from gproc.local import workers

    settings = {"direct": -1, "starter": platform.STARTER_ABOVE}
    got: dict[str, list[dict[str, float]]] = {k: [] for k in settings}
    for r in range(args.rounds):
        for name, above in settings.items():
            res = one(args.n, args.fanout, None, args.runs, args.pings, starter_above=above)
            print(f"round {r + 1}: {name} " + " ".join(f"{k}={v:.3f}" for k, v in res.items()), flush=True)
            got[name].append(res)
    procs = workers(args.n, args.fanout)
    med = medians(got)
    out = [
        f"## Program starts through a starter process: N = {args.n:,}, fanout {args.fanout}",
        "",
        f"Command: `{shlex.join(['python', 'bench/starter.py', *sys.argv[1:]])}`  ",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {machine()}  ",
        f"gproc: {gproc_source()}  ",
        f"{procs} worker processes ({args.n / procs:,.0f} nodes each); each setting started {args.rounds} times,"
        f" alternating; per start the median of {args.runs} launches of `/bin/true` with `-localbin` on every"
        f" node, of the machine's CPU during them, and of {args.pings} no-op round trips; the table gives the"
        " median over the starts. direct: every worker calls `posix_spawn` itself; starter: through its"
        f" `platform.Starter` (gproc's default above {platform.STARTER_ABOVE:,} open descriptors).",
        "",
        "| start | up (s) | launch (s) | launch / floor | machine CPU per launch (s) | no-op (ms) | other load |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        out.append(
            f"| {name} | {m['up']:.1f} | {m['launch']:.2f} | {m['launch'] / m['floor']:.2f} | {m['cpu']:.1f}"
            f" | {m['ping'] * 1000:.0f} | {m['other']:.0%} |"
        )
    d, s = med["direct"], med["starter"]
    out += [
        "",
        f"Through the starter: launch {d['launch'] / s['launch']:.2f}x faster, {d['cpu'] - s['cpu']:.1f} s less"
        f" CPU per launch ({(d['cpu'] - s['cpu']) / args.n * 1e6:.0f} µs per program).",
        "",
    ]
    publish("starter", "\n".join(out), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
