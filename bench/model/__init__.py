"""A model of gproc's tree past one machine: measured costs, a discrete-event simulation, projections.

What it does (``python bench/model``, about 100 minutes with every point measured; ``--no-measure``: seconds):

1. **Measures** what one node spends on each step, briefly and with gproc's real code ("the parts"):
   frames (``overlay.TreeLink`` over TLS 1.3 on loopback TCP with the cluster credential, one frame at a
   time, so each costs a wake-up as in the tree: send = ``TreeLink.send``, i.e. ``wire.pack`` + asyncio's
   TLS layer + ``send()``; receive = the rest of the round), the op machinery (a real ``overlay.Node``
   whose children are stand-in links: ``start_op`` and ``_on_rep``, fitted as base + per child + per
   target rank, since rank sets are expanded into Python sets at every node), one ``exec`` of
   /bin/true through the real ``ExecService`` (its own CPU and its child's), a spawn (``Popen`` as
   ``platform.Command`` does it, and ``posix_spawn`` as the floor) with few and with 8,000 open
   descriptors (the vfork child closes them before exec: its CPU grows with the descriptors of the
   process that forks, i.e. with the nodes a worker process hosts), the master's node selection
   (``nodespec.select('**')``) per node, and a 128 KiB ``put`` chunk (pack + encrypt; decrypt + unpack +
   SHA-256 + write), and a start through ``platform.Starter``. Then real local clusters
   (``gproc.local.up``: ``PROBE`` and ``PROBES_MORE``, 256 to 10,000 nodes in 4 and in 16 worker
   processes, each started three times, the 10,000-node ones five): the CPU their workers (with their
   starters), their programs, the master and the client spend per no-op and per launch (medians of
   the ops), less what the parts
   predict for that cluster, gives per-node corrections for the local environment (what daemons
   sharing this machine spend beyond or short of the parts; ``Costs.at`` reads them off by size and
   process count) and the master's fixed cost per request. Any cost can be overridden
   (``--cost NAME=MICROSECONDS``), or all taken from the stored defaults (``--no-measure``).
   In the same run it measures the validation points (N = 1,024 and 10,000 at fanouts 4-64, as
   ``bench/fanout.py`` does), each started three times too (the 1,024-node ones six: they scatter
   more and cost little; the 10,000-node ones five: their starts scatter by up to ±20 %), in turn
   with the calibration clusters and the parts (three rounds of parts, cluster, point, cluster,
   point, ..., then two of the 10,000-node ones alone; medians over the rounds): the calibration and
   the points then see this VM's speed of the same minutes (it drifts by ~20 % over an hour). About
   an hour and three quarters in all.
2. **Simulates** a launch (``exec`` of /bin/true) and a no-op (``ping``) on the tree that
   ``gproc.local.layout`` builds (levels filled in turn, the master has ``fanout`` children). The op goes
   down (a node forwards one frame per child, then starts its own program), replies are merged
   (identical results: one reply frame per link, constant size) and go up as soon as a node's own part
   and all its children ended; launch time = until the master has every reply. Two environments:

   * **local** (how the calibration points were measured): every node daemon of ``gproc.local.up``
     on this machine's ``--cores`` CPUs: the master and the worker processes (each an event loop
     hosting whole subtrees, ``gproc.local.workers`` of them) and every spawned
     program compete for the cores. A ``simpy`` simulation: a worker runs, per loop turn, the tasks
     that were ready at its start, at most 8 program starts (``SpawnGate``), in slices of
     ``--quantum`` on one core; the ``vfork`` child closes the worker's descriptors before ``exec``
     while the worker waits; programs run as their own processes; heartbeats (3 frames per link per
     period) are a steady background load. Loopback latency is ignored.
   * **cluster**: one node daemon per machine, its event loop on one core and its programs on
     another; links have latency ``--latency`` per hop and the node's NIC ``--bandwidth`` (frames to
     its children leave one after the other). Simulated per node with ``simpy`` up to
     ``--des-max`` nodes, and for any N by a level-by-level critical-path recurrence (the tree is
     regular: all nodes of one level behave alike; it takes the largest subtree of each level), and
     the two are checked against each other. A node costs what the parts say there (no local
     correction: one node per process).
3. **Validates** the local model against the points measured in this run (or, with ``--points FILE``
   or ``--no-measure``, those of ``bench/fanout.json``, written by ``bench/fanout.py``; provisional
   numbers when it is missing): model vs measured and the error, for launch, no-op and bytes at the
   master, and whether every point is within 25 %; and, as a second line, against ``bench/fanout.json``'s
   points of another hour. No parameter is fitted to those points; the other load a point records (CPU
   used by other processes meanwhile) is simulated as such. The points go to ``bench/model_points.json``.
4. **Projects** for 10^5, 10^6 and 10^7 nodes on a 10 GbE cluster: launch, no-op round trip, bytes
   received by the master for identical output (one reply per master link), and the broadcast of a
   10 MiB file (128 KiB chunks, store-and-forward per chunk, a node sends each chunk to its children
   one after the other over its NIC and encrypts it once per child).
5. Writes ``bench/model.png`` and its section of ``bench/RESULTS.md`` (``--no-write``: print only).

The parts of this package, each readable alone, importing only those above it:
``parts`` (the costs and constants), ``points`` (validation points), ``simulate`` (the tree, the local
and cluster simulations), ``measure`` (the parts, measured), ``calibrate`` (real local clusters: the
corrections and the points), ``report`` (validation, tables, plot) and ``main`` (the command line).
"""
