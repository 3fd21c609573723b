"""Reliable multicast (SPEC §8, the SRFTT seed): packets, FEC groups, repair requests, pacing.

Pure logic, no sockets (``gproc.mcastnet`` moves the packets; ``gproc.services.multicast`` sets a
session up through the tree). A session carries files cut into *groups* of at most K data packets
(shares 0…k-1 are the file's bytes); repair shares k…255 of a group are made with zfec (an erasure
code: any k distinct shares rebuild the group). The sender sends each group's data and a few repair
shares on the primary channel (as many as the loss receivers report calls for: adaptive
redundancy), then answers repair requests (NAKs) with fresh repair shares on the group's
retransmission channel (group mod T). A receiver short of shares for a group asks after a random
back-off and holds back when it hears another receiver ask for as many, or sees repairs arrive.

Every packet ends with an HMAC-SHA256 (16 bytes) under the session's key, which only the session's
nodes got (down the TLS tree): anything else on the port is dropped by ``open_packet``.
"""

from __future__ import annotations

import bisect
import hmac
import math
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zfec

MAGIC = b"GM"
VERSION = 1
MAC_LEN = 16
MAX_SHARES = 256  # zfec's limit on shares per group (indices 0…255)
DATA, NAK, STATUS = 1, 2, 3

_HEAD = struct.Struct("!2sBBQ")  # magic, version, type, session id
_DATA = struct.Struct("!IIIBB")  # group, horizon, seq (primary channel; 0 on a repair channel), share, k
_NAK = struct.Struct("!IHHI")  # receiver rank, loss per mille, entries, socket overflow drops
_ENTRY = struct.Struct("!IH")  # group, shares still needed
_STATUS = struct.Struct("!II")  # horizon, groups in the session
NO_HORIZON = 0xFFFFFFFF  # no group completely sent yet
MAX_ENTRIES = 160  # repair requests in one NAK (fits a 1500-byte frame)


class BadPacket(Exception):
    """A packet that is not one of this session's (garbage, forged, another session's)."""


@dataclass(frozen=True)
class Params:
    """What sender and receivers agree on (sent down the tree with the key)."""

    session: int
    key: bytes
    sizes: tuple[int, ...]  # the files' sizes, in session order
    psize: int = 1400  # payload bytes per packet
    k: int = 64  # data shares per group
    channels: int = 4  # retransmission channels (T)
    backoff: float = 0.02  # a NAK waits uniformly up to this long
    retry: float = 0.12  # after asking (or hearing a request), wait this long before asking again

    def __post_init__(self) -> None:
        if not (64 <= self.psize <= 8900 and 1 <= self.k < MAX_SHARES and 1 <= self.channels <= 64):
            raise ValueError("multicast: packet size 64-8900, K 1-255, 1-64 channels")
        if len(self.key) < 16:
            raise ValueError("multicast: the session key is too short")


class Layout:
    """Where each group lies: files cut into groups of ``k`` shares of ``psize`` bytes, global group
    numbers across the files in order (an empty file has no group)."""

    def __init__(self, sizes: Sequence[int], psize: int, k: int) -> None:
        self.psize, self.k = psize, k
        self.sizes = list(sizes)
        span = psize * k
        self.first: list[int] = []  # first group of each file
        n = 0
        for size in self.sizes:
            self.first.append(n)
            n += -(-size // span)
        self.groups = n

    def locate(self, g: int) -> tuple[int, int, int]:
        """(file index, byte offset of the group in it, data shares in the group)."""
        if not 0 <= g < self.groups:
            raise IndexError(g)
        f = bisect.bisect_right(self.first, g) - 1  # of files starting at g, the last has groups
        offset = (g - self.first[f]) * self.psize * self.k
        left = self.sizes[f] - offset
        return f, offset, min(self.k, -(-left // self.psize))

    def file_groups(self, f: int) -> range:
        end = self.first[f + 1] if f + 1 < len(self.first) else self.groups
        return range(self.first[f], end)


# ---- packets ---------------------------------------------------------------------------------------


def _seal(key: bytes, body: bytes) -> bytes:
    return body + hmac.digest(key, body, "sha256")[:MAC_LEN]


def data_packet(p: Params, group: int, horizon: int, seq: int, share: int, k: int, payload: bytes) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, DATA, p.session) + _DATA.pack(group, horizon, seq, share, k)
    return _seal(p.key, head + payload)


def nak_packet(p: Params, rank: int, loss: float, overflow: int, entries: Sequence[tuple[int, int]]) -> bytes:
    body = _NAK.pack(rank, min(1000, max(0, round(loss * 1000))), len(entries), overflow & 0xFFFFFFFF)
    body += b"".join(_ENTRY.pack(g, n) for g, n in entries)
    return _seal(p.key, _HEAD.pack(MAGIC, VERSION, NAK, p.session) + body)


def status_packet(p: Params, horizon: int, groups: int) -> bytes:
    return _seal(p.key, _HEAD.pack(MAGIC, VERSION, STATUS, p.session) + _STATUS.pack(horizon, groups))


@dataclass(frozen=True)
class Data:
    group: int
    horizon: int
    seq: int
    share: int
    k: int
    payload: memoryview


@dataclass(frozen=True)
class Nak:
    rank: int
    loss: float
    overflow: int
    entries: list[tuple[int, int]]


@dataclass(frozen=True)
class Status:
    horizon: int
    groups: int


def open_packet(p: Params, packet: bytes | memoryview) -> Data | Nak | Status:
    """The packet's contents, or BadPacket when it is not an authentic packet of this session."""
    view = memoryview(packet)
    if len(view) < _HEAD.size + MAC_LEN:
        raise BadPacket("short")
    body, mac = view[:-MAC_LEN], view[-MAC_LEN:]
    magic, version, kind, session = _HEAD.unpack_from(body)
    if magic != MAGIC or version != VERSION or session != p.session:
        raise BadPacket("not this session's")
    if not hmac.compare_digest(hmac.digest(p.key, body, "sha256")[:MAC_LEN], mac):
        raise BadPacket("bad authentication code")
    rest = body[_HEAD.size :]
    if kind == DATA and len(rest) >= _DATA.size:
        g, horizon, seq, share, k = _DATA.unpack_from(rest)
        return Data(g, horizon, seq, share, k, rest[_DATA.size :])
    if kind == NAK and len(rest) >= _NAK.size:
        rank, loss, n, overflow = _NAK.unpack_from(rest)
        if len(rest) != _NAK.size + n * _ENTRY.size:
            raise BadPacket("bad NAK length")
        entries = [_ENTRY.unpack_from(rest, _NAK.size + i * _ENTRY.size) for i in range(n)]
        return Nak(rank, loss / 1000, overflow, entries)
    if kind == STATUS and len(rest) == _STATUS.size:
        return Status(*_STATUS.unpack_from(rest))
    raise BadPacket("unknown packet type")


# ---- the erasure code --------------------------------------------------------------------------------


class Coder:
    """zfec encoders by group size (made once), a decoder per decode: a zfec Decoder used a second
    time on the same blocks gives wrong bytes (zfec 1.6), so none is reused."""

    def __init__(self) -> None:
        self._enc: dict[int, zfec.Encoder] = {}

    def repairs(self, shares: Sequence[bytes], which: Sequence[int]) -> list[bytes]:
        """The shares numbered ``which`` (any of 0…255) of the group whose data shares are ``shares``."""
        k = len(shares)
        enc = self._enc.get(k)
        if enc is None:
            enc = self._enc[k] = zfec.Encoder(k, MAX_SHARES)
        return [bytes(b) for b in enc.encode(tuple(shares), tuple(which))]

    @staticmethod
    def decode(k: int, shares: dict[int, bytes]) -> list[bytes]:
        """The k data shares from any k distinct shares (index -> bytes)."""
        nums = sorted(shares)[:k]
        if len(nums) < k:
            raise ValueError("not enough shares")
        return [bytes(b) for b in zfec.Decoder(k, MAX_SHARES).decode(tuple(shares[i] for i in nums), tuple(nums))]


# ---- a receiver's repair requests ---------------------------------------------------------------------


@dataclass
class Request:
    """One group's state at a receiver while it lacks shares."""

    due: float  # when to ask (or look again)
    promised: int = 0  # repairs someone asked for in the current round
    until: float = 0.0  # when that round is over


@dataclass
class NakPlanner:
    """When a receiver asks for repairs, and when it keeps quiet (SRFTT's suppression).

    ``lacking(g, now, need)`` once the group is known fully sent and still short; ``heard(g, n,
    now)`` for another receiver's request; ``repair_seen(g, now)`` when a repair share of g arrives;
    ``due(now, need)`` gives the requests to send now. ``rand`` is injectable for tests."""

    backoff: float
    retry: float
    rand: Callable[[], float] = random.random
    open: dict[int, Request] = field(default_factory=dict)
    sent: int = 0  # entries asked for
    suppressed: int = 0  # entries not asked for because another receiver had

    def lacking(self, g: int, now: float) -> None:
        if g not in self.open:
            self.open[g] = Request(due=now + self.rand() * self.backoff)

    def done(self, g: int) -> None:
        self.open.pop(g, None)

    def heard(self, g: int, n: int, now: float, need: int) -> None:
        r = self.open.get(g)
        if r is None:
            return
        r.promised = max(r.promised if r.until > now else 0, n)
        r.until = now + self.retry
        if n >= need and r.due < r.until:  # someone asked for as many as I lack: wait for them
            r.due = r.until + self.rand() * self.backoff
            self.suppressed += 1

    def repair_seen(self, g: int, now: float) -> None:
        r = self.open.get(g)
        if r is not None and r.due < now + self.retry:
            r.due = now + self.retry + self.rand() * self.backoff

    def due(self, now: float, need: Callable[[int], int]) -> list[tuple[int, int]]:
        """The (group, shares needed) to ask for now; each is then given ``retry`` to be answered."""
        out: list[tuple[int, int]] = []
        for g, r in self.open.items():
            if r.due > now:
                continue
            n = need(g)
            if n <= 0:
                continue
            if r.until > now and r.promised >= n:  # a request of this round covers it
                r.due = r.until + self.rand() * self.backoff
                self.suppressed += 1
                continue
            out.append((g, n))
            r.promised, r.until = n, now + self.retry
            r.due = r.until + self.rand() * self.backoff
            if len(out) >= MAX_ENTRIES:
                break
        self.sent += len(out)
        return out


@dataclass
class LossMeter:
    """A receiver's loss on the primary channel, from the sender's sequence numbers."""

    window: float = 1.0
    start: float = 0.0
    low: int = -1
    high: int = -1
    got: int = 0
    last: float = 0.0  # the last window's loss

    def saw(self, seq: int, now: float) -> None:
        if self.low < 0 or now - self.start > self.window:
            if self.low >= 0 and self.high >= self.low:
                span = self.high - self.low + 1
                self.last = max(0.0, 1 - self.got / span)
            self.start, self.low, self.high, self.got = now, seq, seq, 0
        self.got += 1
        self.high = max(self.high, seq)

    def loss(self) -> float:
        if self.low >= 0 and self.high > self.low:
            now_loss = max(0.0, 1 - self.got / (self.high - self.low + 1))
            return max(self.last, now_loss) if self.got < 50 else now_loss
        return self.last


# ---- the sender's side -------------------------------------------------------------------------------


@dataclass
class RepairPlanner:
    """What the sender owes: requests for the same group within one round are merged (the most any
    receiver asked for, not the sum), so suppressed or not, a group costs what its worst receiver
    lacks. Groups are served oldest first."""

    round: float
    owed: dict[int, int] = field(default_factory=dict)
    rounds: dict[int, tuple[float, int]] = field(default_factory=dict)  # group -> (round start, asked)
    naks: int = 0  # NAK packets heard
    entries: int = 0

    def asked(self, g: int, n: int, now: float) -> None:
        self.entries += 1
        start, asked = self.rounds.get(g, (-math.inf, 0))
        if now - start < self.round:
            if n > asked:
                self.owed[g] = self.owed.get(g, 0) + n - asked
                self.rounds[g] = (start, n)
        else:
            self.owed[g] = max(self.owed.get(g, 0), n)
            self.rounds[g] = (now, n)

    def next(self) -> tuple[int, int] | None:
        """(group, repairs to send now) of the oldest group owed, removed from what is owed."""
        if not self.owed:
            return None
        g = min(self.owed)
        return g, self.owed.pop(g)


@dataclass
class Redundancy:
    """Adaptive redundancy: repair shares sent with each group before anyone asks, from the loss
    receivers report (the worst in the last ``memory`` seconds: with many receivers some receiver
    always sees about the worst). A group of k shares gets ceil(k p + sqrt(k p)): the mean loss plus
    about one standard deviation, the rest comes from requests."""

    memory: float = 2.0
    reports: list[tuple[float, float]] = field(default_factory=list)  # (time, loss)

    def report(self, loss: float, now: float) -> None:
        self.reports.append((now, loss))
        if len(self.reports) > 4096:
            del self.reports[:2048]

    def loss(self, now: float) -> float:
        self.reports = [(t, p) for t, p in self.reports if now - t <= self.memory]
        return max((p for _, p in self.reports), default=0.0)

    def shares(self, k: int, now: float) -> int:
        kp = k * self.loss(now)
        return 0 if kp <= 0 else min(MAX_SHARES - k, math.ceil(kp + math.sqrt(kp)))


@dataclass
class Pacer:
    """A token bucket at ``rate`` bytes/s that backs off (x0.7, at most every ``every`` s) when
    receivers report that their socket overflowed or that loss rose well above what they usually
    see (congestion, not a lossy wire), and creeps back up (+5 % of the ceiling per ``every``) when
    they do not."""

    rate: float
    floor: float = 1 << 20
    every: float = 0.1
    current: float = 0.0
    tokens: float = 0.0
    stamp: float = 0.0
    changed: float = 0.0
    overflow: dict[int, int] = field(default_factory=dict)  # rank -> drops last reported
    base_loss: float = 1.0  # the lowest loss a window of reports showed
    window: list[float] = field(default_factory=list)
    window_start: float = 0.0
    backoffs: int = 0

    def __post_init__(self) -> None:
        self.current = self.rate
        self.floor = min(self.floor, self.rate / 8)

    def wait(self, size: int, now: float) -> float:
        """Seconds to wait before ``size`` bytes may go (0: now, the tokens are taken)."""
        self.tokens = min(self.current * 0.01 + 2 * size, self.tokens + (now - self.stamp) * self.current)
        self.stamp = now
        if self.tokens > 0:  # the packet may run the bucket into debt, which the next ones wait out
            self.tokens -= size
            return 0.0
        return -self.tokens / self.current + 1e-6

    def reported(self, rank: int, loss: float, overflow: int, receivers: int, now: float) -> None:
        before = self.overflow.get(rank)
        self.overflow[rank] = overflow
        congested = before is not None and overflow > before
        if now - self.window_start > 1.0:
            if len(self.window) >= max(1, receivers // 4):
                self.base_loss = min(self.base_loss, sorted(self.window)[len(self.window) // 2])
            self.window, self.window_start = [], now
        self.window.append(loss)
        many = len(self.window) >= max(2, receivers // 2)
        if many and sorted(self.window)[len(self.window) // 2] > self.base_loss + 0.05:
            congested = True
        if congested and now - self.changed >= self.every:
            self.current = max(self.floor, self.current * 0.7)
            self.changed = now
            self.backoffs += 1

    def tick(self, now: float) -> None:
        if self.current < self.rate and now - self.changed >= self.every:
            self.current = min(self.rate, self.current + 0.05 * self.rate)
            self.changed = now
