"""The sockets of reliable multicast: the sender's loop and a receiver's loop (``gproc.multicast`` has
the logic they share). Each runs in a thread of its own, blocking on one UDP socket with a short
timeout, so neither holds an event loop; ``stop`` (a ``threading.Event``) ends either.

Channels of a session: the primary group (data and the repair shares sent with it, numbered on that
channel so receivers can tell their loss), the control group (NAKs: the sender and every receiver
hear them, which is what lets receivers hold back), and T retransmission groups (answers to NAKs, for
group g on channel g mod T; a receiver is a member of a retransmission group only while it lacks a
group that channel serves). TTL 1: the session stays on the link; nodes further away get the files
through the tree instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gproc import multicast as mc

IP_MULTICAST_ALL = 49  # Linux: 0 = a socket hears only the groups it joined itself
RCVBUF = 16 << 20
TICK = 0.005  # how often a receiver looks at its repair requests
STATUS_EVERY = 0.05  # the sender's "all sent up to here" while it waits for requests
OVERFLOW_EVERY = 0.5  # how often a receiver reads its socket's drop count


@dataclass(frozen=True)
class Channels:
    primary: str
    control: str
    repair: tuple[str, ...]
    port: int

    @staticmethod
    def pick(base: int, channels: int, port: int) -> Channels:
        """Addresses base, base+1, … (``base`` an IPv4 address as an integer)."""
        addr = [socket.inet_ntoa((base + i).to_bytes(4, "big")) for i in range(channels + 2)]
        return Channels(addr[0], addr[1], tuple(addr[2:]), port)


def _socket(iface: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is not None:
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
                break
            except OSError:
                continue
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.bind(("0.0.0.0", port))
    return s


def _join(s: socket.socket, group: str, iface: str, on: bool = True) -> None:
    opt = socket.IP_ADD_MEMBERSHIP if on else socket.IP_DROP_MEMBERSHIP
    s.setsockopt(socket.IPPROTO_IP, opt, socket.inet_aton(group) + socket.inet_aton(iface))


def socket_drops(s: socket.socket) -> int:
    """Datagrams the kernel dropped because this socket's buffer was full (Linux; 0 elsewhere)."""
    try:
        inode = os.fstat(s.fileno()).st_ino
        with open("/proc/net/udp") as f:
            for line in f:
                cols = line.split()
                if len(cols) > 12 and cols[9] == str(inode):
                    return int(cols[-1])
    except (OSError, ValueError):
        pass
    return 0


# ---- the sender ----------------------------------------------------------------------------------


@dataclass
class SenderStats:
    packets: int = 0
    bytes: int = 0  # UDP payload bytes put on the wire (headers and MAC included)
    data: int = 0
    sent_repairs: int = 0  # repair shares sent with their group
    answered: int = 0  # repair shares sent in answer to NAKs
    naks: int = 0
    entries: int = 0
    backoffs: int = 0
    seconds: float = 0.0
    rate: float = 0.0  # the pace it ended at (bytes/s)

    def as_dict(self) -> dict[str, int | float]:
        return dict(self.__dict__)


class Sender:
    """Sends a session's files, then repairs until ``stop`` is set."""

    def __init__(
        self,
        p: mc.Params,
        ch: Channels,
        iface: str,
        paths: Sequence[str],
        rate: float,
        receivers: int,
        redundancy: int = 0,
    ) -> None:
        self.p, self.ch, self.iface, self.paths = p, ch, iface, list(paths)
        self.layout = mc.Layout(p.sizes, p.psize, p.k)
        self.receivers = max(1, receivers)
        self.pacer = mc.Pacer(rate)
        self.redundancy = mc.Redundancy()
        self.initial = redundancy  # repair shares per group until receivers report loss
        self.planner = mc.RepairPlanner(round=p.retry)
        self.coder = mc.Coder()
        self.stop = threading.Event()
        self.stats = SenderStats()
        self.next_share: dict[int, int] = {}
        self.seq = 0
        self.horizon = mc.NO_HORIZON
        self.error: str | None = None
        self.sock: socket.socket | None = None
        self.fds: list[int] = []

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.sock = _socket(self.iface, self.ch.port)
            _join(self.sock, self.ch.control, self.iface)
            self.fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in self.paths]
            self._run()
        except OSError as e:
            self.error = f"multicast sender: {e.strerror or e}"
        finally:
            for fd in self.fds:
                os.close(fd)
            if self.sock is not None:
                self.sock.close()
            self.stats.seconds = round(time.monotonic() - t0, 4)
            self.stats.rate = round(self.pacer.current)
            self.stats.backoffs = self.pacer.backoffs
            self.stats.naks, self.stats.entries = self.planner.naks, self.planner.entries

    def _run(self) -> None:
        last_status = 0.0
        for g in range(self.layout.groups):
            if self.stop.is_set():
                return
            self._serve_repairs()
            self._send_group(g)
            self.horizon = g
        while not self.stop.is_set():
            self._serve_repairs()
            now = time.monotonic()
            if now - last_status >= STATUS_EVERY:
                self._send(mc.status_packet(self.p, self.horizon, self.layout.groups), self.ch.primary)
                last_status = now
            self._listen(STATUS_EVERY / 2)

    def _shares(self, g: int) -> list[bytes]:
        f, offset, k = self.layout.locate(g)
        span = self.p.psize * k
        data = os.pread(self.fds[f], span, offset)
        if len(data) < min(span, self.p.sizes[f] - offset):
            raise OSError(0, f"{self.paths[f]} changed while sending")
        data = data.ljust(span, b"\0")
        return [data[i * self.p.psize : (i + 1) * self.p.psize] for i in range(k)]

    def _send_group(self, g: int) -> None:
        shares = self._shares(g)
        k = len(shares)
        now = time.monotonic()
        extra = max(self.redundancy.shares(k, now), self.initial if not self.redundancy.reports else 0)
        extra = min(extra, mc.MAX_SHARES - k)
        for i, share in enumerate(shares):
            self._send(self._data(g, i, k, share, primary=True), self.ch.primary)
        self.stats.data += k
        if extra:
            for i, share in enumerate(self.coder.repairs(shares, range(k, k + extra))):
                self._send(self._data(g, k + i, k, share, primary=True), self.ch.primary)
            self.stats.sent_repairs += extra
        self.next_share[g] = k + extra

    def _data(self, g: int, share: int, k: int, payload: bytes, primary: bool) -> bytes:
        seq = 0
        if primary:
            self.seq += 1
            seq = self.seq
        return mc.data_packet(self.p, g, self.horizon, seq, share, k, payload)

    def _serve_repairs(self) -> None:
        while (job := self.planner.next()) is not None and not self.stop.is_set():
            g, n = job
            if not 0 <= g < self.layout.groups or (self.horizon == mc.NO_HORIZON or g > self.horizon):
                continue  # not sent yet: it comes anyway
            shares = self._shares(g)
            k = len(shares)
            start = self.next_share.get(g, k)
            which = [(start + i) % mc.MAX_SHARES for i in range(min(n, mc.MAX_SHARES))]
            self.next_share[g] = (start + len(which)) % mc.MAX_SHARES
            channel = self.ch.repair[g % len(self.ch.repair)]
            for idx, share in zip(which, self.coder.repairs(shares, which), strict=True):
                self._send(self._data(g, idx, k, share, primary=False), channel)
            self.stats.answered += len(which)

    def _send(self, packet: bytes, group: str) -> None:
        assert self.sock is not None
        while True:
            now = time.monotonic()
            self.pacer.tick(now)
            wait = self.pacer.wait(len(packet), now)
            if wait <= 0:
                break
            self._listen(wait)
        try:
            self.sock.sendto(packet, (group, self.ch.port))
        except BlockingIOError:  # pragma: no cover - a full send queue: that packet is lost
            pass
        except OSError as e:
            if e.errno not in (105, 11):  # ENOBUFS, EAGAIN: lost like on the wire
                raise
        self.stats.packets += 1
        self.stats.bytes += len(packet)
        if self.stats.packets % 64 == 0:
            self._listen(0)

    def _listen(self, timeout: float) -> None:
        """Take the NAKs that arrived (waiting up to ``timeout`` for the first)."""
        assert self.sock is not None
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        while ready:
            try:
                packet = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            try:
                msg = mc.open_packet(self.p, packet)
            except mc.BadPacket:
                continue
            if isinstance(msg, mc.Nak):
                now = time.monotonic()
                self.planner.naks += 1
                self.redundancy.report(msg.loss, now)
                self.pacer.reported(msg.rank, msg.loss, msg.overflow, self.receivers, now)
                for g, n in msg.entries:
                    self.planner.asked(g, n, now)


# ---- a receiver -----------------------------------------------------------------------------------


@dataclass
class ReceiverStats:
    packets: int = 0  # authentic packets
    bytes: int = 0
    dropped: int = 0  # packets that were not this session's, or forged
    duplicates: int = 0
    decoded: int = 0  # groups rebuilt from repair shares
    naks: int = 0  # NAK packets sent
    entries: int = 0  # groups asked for
    suppressed: int = 0
    overflow: int = 0


@dataclass
class Received:
    """What a receiver got: ``complete``, or why not; each file's SHA-256 as read back."""

    complete: bool
    reason: str = ""
    digests: list[str] = field(default_factory=list)
    stats: ReceiverStats = field(default_factory=ReceiverStats)


class Receiver:
    """Receives a session's files into open descriptors (None: a file this node already has)."""

    def __init__(
        self,
        p: mc.Params,
        ch: Channels,
        iface: str,
        rank: int,
        fds: Sequence[int | None],
        idle: float = 10.0,
        limit: float = 3600.0,
    ) -> None:
        self.p, self.ch, self.iface, self.rank = p, ch, iface, rank
        self.fds = list(fds)
        self.idle, self.limit = idle, limit
        self.layout = mc.Layout(p.sizes, p.psize, p.k)
        self.stop = threading.Event()
        self.stats = ReceiverStats()
        self.done = bytearray(self.layout.groups)
        self.left = 0
        for f, fd in enumerate(self.fds):
            for g in self.layout.file_groups(f):
                if fd is None:
                    self.done[g] = 1
                else:
                    self.left += 1
        self.have: dict[int, set[int]] = {}  # group -> data shares written
        self.repairs: dict[int, dict[int, bytes]] = {}
        self.planner = mc.NakPlanner(p.backoff, p.retry)
        self.loss = mc.LossMeter()
        self.horizon = -1
        self.joined: set[int] = set()  # retransmission channels joined
        self.sock: socket.socket | None = None

    def open(self) -> None:
        """Join the session's groups (before the sender starts, so nothing is missed)."""
        self.sock = _socket(self.iface, self.ch.port)
        _join(self.sock, self.ch.primary, self.iface)
        _join(self.sock, self.ch.control, self.iface)
        self.sock.settimeout(TICK)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def run(self) -> Received:
        if self.sock is None:
            self.open()
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Received:
        assert self.sock is not None
        sock, buf = self.sock, bytearray(65536)
        view = memoryview(buf)
        start = last_rx = last_tick = last_drops = time.monotonic()
        while self.left > 0:
            if self.stop.is_set():
                return Received(False, "stopped", stats=self.stats)
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                n = -1
            now = time.monotonic()
            if n >= 0:
                try:
                    msg = mc.open_packet(self.p, view[:n])
                except mc.BadPacket:
                    self.stats.dropped += 1
                else:
                    last_rx = now
                    self.stats.packets += 1
                    self.stats.bytes += n
                    self._take(msg, now)
            if now - last_tick >= TICK:
                last_tick = now
                if now - last_drops >= OVERFLOW_EVERY:
                    last_drops = now
                    self.stats.overflow = socket_drops(sock)
                self._ask(now)
                if now - last_rx > self.idle:
                    return Received(False, f"no packets for {self.idle:.0f} s", stats=self._stats())
                if now - start > self.limit:
                    return Received(False, f"not complete after {self.limit:.0f} s", stats=self._stats())
        return Received(True, digests=self._digests(), stats=self._stats())

    def _stats(self) -> ReceiverStats:
        self.stats.entries, self.stats.suppressed = self.planner.sent, self.planner.suppressed
        return self.stats

    def _take(self, msg: mc.Data | mc.Nak | mc.Status, now: float) -> None:
        if isinstance(msg, mc.Data):
            if msg.seq:
                self.loss.saw(msg.seq, now)
            self._data(msg, now)
            horizon = msg.horizon
        elif isinstance(msg, mc.Nak):
            if msg.rank != self.rank:
                for g, n in msg.entries:
                    if 0 <= g < self.layout.groups and not self.done[g]:
                        self.planner.heard(g, n, now, self._need(g))
            return
        else:
            horizon = msg.horizon
        if horizon != mc.NO_HORIZON and horizon > self.horizon:
            for g in range(self.horizon + 1, min(horizon, self.layout.groups - 1) + 1):
                if not self.done[g]:
                    self.planner.lacking(g, now)
                    self._channel(g, True)
            self.horizon = horizon

    def _need(self, g: int) -> int:
        k = self.layout.locate(g)[2]
        return k - len(self.have.get(g, ())) - len(self.repairs.get(g, ()))

    def _data(self, d: mc.Data, now: float) -> None:
        g = d.group
        if not 0 <= g < self.layout.groups or len(d.payload) != self.p.psize:
            self.stats.dropped += 1
            return
        if self.done[g]:
            self.stats.duplicates += 1
            return
        f, offset, k = self.layout.locate(g)
        if d.k != k:
            self.stats.dropped += 1
            return
        have = self.have.setdefault(g, set())
        if d.share < k:
            if d.share in have:
                self.stats.duplicates += 1
                return
            at = offset + d.share * self.p.psize
            fd = self.fds[f]
            assert fd is not None
            os.pwrite(fd, d.payload[: max(0, self.p.sizes[f] - at)], at)
            have.add(d.share)
        else:
            reps = self.repairs.setdefault(g, {})
            if d.share in reps:
                self.stats.duplicates += 1
                return
            reps[d.share] = bytes(d.payload)
            if not d.seq:
                self.planner.repair_seen(g, now)
        if len(have) + len(self.repairs.get(g, ())) >= k:
            self._complete(g, f, offset, k)

    def _complete(self, g: int, f: int, offset: int, k: int) -> None:
        have = self.have.pop(g, set())
        reps = self.repairs.pop(g, {})
        if len(have) < k:
            fd = self.fds[f]
            assert fd is not None
            ps = self.p.psize
            shares = {i: os.pread(fd, ps, offset + i * ps).ljust(ps, b"\0") for i in have}
            shares.update(reps)
            for i, share in enumerate(mc.Coder.decode(k, shares)):
                if i not in have:
                    at = offset + i * ps
                    os.pwrite(fd, share[: max(0, self.p.sizes[f] - at)], at)
            self.stats.decoded += 1
        self.done[g] = 1
        self.left -= 1
        self.planner.done(g)
        self._channel(g, False)

    def _channel(self, g: int, lacking: bool) -> None:
        """Be a member of a retransmission channel while some group it serves is lacking here."""
        c = g % len(self.ch.repair)
        assert self.sock is not None
        if lacking and c not in self.joined:
            _join(self.sock, self.ch.repair[c], self.iface)
            self.joined.add(c)
        elif not lacking and c in self.joined and not any(h % len(self.ch.repair) == c for h in self.planner.open):
            with contextlib.suppress(OSError):
                _join(self.sock, self.ch.repair[c], self.iface, on=False)
            self.joined.discard(c)

    def _ask(self, now: float) -> None:
        due = self.planner.due(now, self._need)
        if not due:
            return
        assert self.sock is not None
        for i in range(0, len(due), mc.MAX_ENTRIES):
            part = due[i : i + mc.MAX_ENTRIES]
            packet = mc.nak_packet(self.p, self.rank, self.loss.loss(), self.stats.overflow, part)
            with contextlib.suppress(OSError):
                self.sock.sendto(packet, (self.ch.control, self.ch.port))
                self.stats.naks += 1

    def _digests(self) -> list[str]:
        out = []
        for fd in self.fds:
            if fd is None:
                out.append("")
                continue
            h = hashlib.sha256()
            offset = 0
            while chunk := os.pread(fd, 1 << 20, offset):
                h.update(chunk)
                offset += len(chunk)
            out.append(h.hexdigest())
        return out
