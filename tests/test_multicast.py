"""Reliable multicast's pure logic (gproc.multicast): groups, packets and their authentication, the
erasure code under loss, repair requests held back when another receiver asked, the sender merging
requests, pacing. Virtual time throughout; the sockets are tested in tests/cluster/test_multicast.py."""

from __future__ import annotations

import heapq
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import multicast as mc

KEY = b"k" * 32


def params(sizes: tuple[int, ...] = (10_000,), psize: int = 100, k: int = 8) -> mc.Params:
    return mc.Params(session=42, key=KEY, sizes=sizes, psize=psize, k=k, channels=3)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=6), st.integers(64, 300), st.integers(1, 20))
def test_groups_cover_every_byte_of_every_file_once(sizes: list[int], psize: int, k: int) -> None:
    lay = mc.Layout(sizes, psize, k)
    covered = [0] * len(sizes)
    seen = 0
    for f, size in enumerate(sizes):
        for g in lay.file_groups(f):
            ff, offset, kk = lay.locate(g)
            assert ff == f and offset == covered[f] and 1 <= kk <= k
            covered[f] = min(size, offset + kk * psize)
            assert kk == k or covered[f] == size  # only a file's last group is short
            seen += 1
    assert covered == sizes and seen == lay.groups


def test_a_packet_opens_to_what_was_sealed_and_any_change_is_refused() -> None:
    p = params()
    payload = os.urandom(p.psize)
    pkt = mc.data_packet(p, 7, 6, 123, 9, 8, payload)
    d = mc.open_packet(p, pkt)
    assert isinstance(d, mc.Data)
    assert (d.group, d.horizon, d.seq, d.share, d.k, bytes(d.payload)) == (7, 6, 123, 9, 8, payload)
    for i in range(len(pkt)):  # one flipped bit anywhere: header, payload or the code itself
        forged = bytearray(pkt)
        forged[i] ^= 0x10
        with pytest.raises(mc.BadPacket):
            mc.open_packet(p, bytes(forged))
    other_key = mc.Params(session=42, key=b"x" * 32, sizes=p.sizes, psize=p.psize, k=p.k)
    with pytest.raises(mc.BadPacket):
        mc.open_packet(other_key, pkt)
    for junk in (b"", b"GM", pkt[:-1], os.urandom(60), os.urandom(1500)):
        with pytest.raises(mc.BadPacket):
            mc.open_packet(p, junk)
    nak = mc.open_packet(p, mc.nak_packet(p, 3, 0.05, 17, [(1, 2), (9, 4)]))
    assert nak == mc.Nak(3, 0.05, 17, [(1, 2), (9, 4)])
    assert mc.open_packet(p, mc.status_packet(p, 5, 6)) == mc.Status(5, 6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 60), st.randoms(use_true_random=False))
def test_any_k_shares_of_a_group_rebuild_it(k: int, extra: int, rnd: random.Random) -> None:
    psize = 64
    data = [rnd.randbytes(psize) for _ in range(k)]
    coder = mc.Coder()
    total = min(mc.MAX_SHARES, k + extra)
    shares = dict(enumerate(data)) | dict(zip(range(k, total), coder.repairs(data, range(k, total)), strict=True))
    kept = dict(rnd.sample(sorted(shares.items()), k))  # any k of them: data lost, repairs kept
    assert mc.Coder.decode(k, kept) == data
    if k > 1:
        with pytest.raises(ValueError):
            mc.Coder.decode(k, dict(list(kept.items())[:-1]))


def transfer(loss: float, receivers: int, k: int, groups: int, seed: int) -> tuple[list[bool], int, int]:
    """Groups sent to receivers that each lose ``loss`` of the packets; each asks (NakPlanner) and the
    sender answers (RepairPlanner) until all are complete. Returns (complete, shares sent, NAK entries)."""
    rnd = random.Random(seed)
    data = {g: [rnd.randbytes(32) for _ in range(k)] for g in range(groups)}
    coder = mc.Coder()
    have = [{g: {} for g in range(groups)} for _ in range(receivers)]
    planners = [mc.NakPlanner(0.02, 0.1, rand=rnd.random) for _ in range(receivers)]
    sender = mc.RepairPlanner(round=0.1)
    nxt = dict.fromkeys(range(groups), k)
    sent = 0

    def deliver(g: int, idx: int, share: bytes) -> None:
        for r in range(receivers):
            if rnd.random() >= loss and len(have[r][g]) < k:
                have[r][g][idx] = share
                if len(have[r][g]) >= k:
                    planners[r].done(g)

    for g in range(groups):
        for i, share in enumerate(data[g]):
            deliver(g, i, share)
            sent += 1
    now = 0.0
    for r in range(receivers):
        for g in range(groups):
            if len(have[r][g]) < k:
                planners[r].lacking(g, now)
    entries = 0
    while now < 30 and any(len(h[g]) < k for h in have for g in range(groups)):
        now += 0.005
        for r in range(receivers):
            due = planners[r].due(now, lambda g, r=r: k - len(have[r][g]))
            entries += len(due)
            for g, n in due:
                sender.asked(g, n, now)
                for other in range(receivers):
                    if other != r:
                        planners[other].heard(g, n, now, k - len(have[other][g]))
        while (job := sender.next()) is not None:
            g, n = job
            which = [(nxt[g] + i) % mc.MAX_SHARES for i in range(n)]
            nxt[g] += n
            for idx, share in zip(which, coder.repairs(data[g], which), strict=True):
                deliver(g, idx, share)
                sent += 1
            for r in range(receivers):
                planners[r].repair_seen(g, now)
    done = [all(mc.Coder.decode(k, h[g]) == data[g] for g in range(groups)) for h in have]
    return done, sent, entries


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.2])
def test_every_receiver_completes_under_loss(loss: float) -> None:
    done, sent, _ = transfer(loss, receivers=8, k=16, groups=12, seed=1)
    assert all(done)
    assert sent >= 16 * 12


def test_held_back_requests_keep_nak_entries_sublinear_in_receivers() -> None:
    """Every receiver lost the same group: one request (or a few, from the back-off spread) answers
    them all, whatever their number."""
    counts = {}
    for n in (2, 8, 32):
        planners = [mc.NakPlanner(0.02, 0.1, rand=random.Random(i).random) for i in range(n)]
        for pl in planners:
            pl.lacking(0, 0.0)
        events: list[tuple[float, int]] = [(0.0, i) for i in range(n)]
        asked = 0
        delay = 0.001  # a NAK reaches the others a millisecond later
        heard_at: list[tuple[float, int, int]] = []
        now = 0.0
        while now < 0.09:  # within one retry: only the first round counts
            now += 0.0005
            while heard_at and heard_at[0][0] <= now:
                _, who, need = heapq.heappop(heard_at)
                for i, pl in enumerate(planners):
                    if i != who:
                        pl.heard(0, need, now, 5)
            for i, pl in enumerate(planners):
                for _g, need in pl.due(now, lambda _g: 5):
                    asked += 1
                    heapq.heappush(heard_at, (now + delay, i, need))
        counts[n] = asked
        assert sum(pl.suppressed for pl in planners) >= n - asked
        del events
    assert counts[32] <= 4, counts
    assert counts[32] < 32 / 4


def test_a_request_for_fewer_than_i_lack_does_not_hold_me_back() -> None:
    pl = mc.NakPlanner(0.02, 0.1, rand=lambda: 0.5)
    pl.lacking(3, 0.0)
    pl.heard(3, 2, 0.001, need=5)
    assert pl.due(0.011, lambda _g: 5) == [(3, 5)]
    pl2 = mc.NakPlanner(0.02, 0.1, rand=lambda: 0.5)
    pl2.lacking(3, 0.0)
    pl2.heard(3, 5, 0.001, need=5)
    assert pl2.due(0.011, lambda _g: 5) == []
    assert pl2.suppressed == 1


def test_the_sender_sends_what_the_worst_receiver_lacks_not_the_sum() -> None:
    rp = mc.RepairPlanner(round=0.1)
    for n in (3, 5, 2, 5):  # four receivers of one round
        rp.asked(7, n, 0.01)
    rp.asked(2, 1, 0.02)
    assert rp.next() == (2, 1)
    assert rp.next() == (7, 5)
    assert rp.next() is None
    rp.asked(7, 4, 0.5)  # a new round: asked again
    assert rp.next() == (7, 4)


def test_redundancy_follows_reported_loss() -> None:
    red = mc.Redundancy(memory=2.0)
    assert red.shares(64, 0.0) == 0
    red.report(0.01, 0.0)
    low = red.shares(64, 0.1)
    red.report(0.10, 0.2)
    high = red.shares(64, 0.3)
    assert 1 <= low < high <= mc.MAX_SHARES - 64
    assert red.shares(64, 5.0) == 0  # old reports forgotten


def test_pacing_holds_the_rate_and_backs_off_on_overflow() -> None:
    pace = mc.Pacer(rate=1e6)
    now, sent = 0.0, 0
    while now < 2.0:
        w = pace.wait(1000, now)
        if w:
            now += w
        else:
            sent += 1000
    assert sent <= 1e6 * 2.0 + 20_000
    pace.reported(1, 0.0, 10, 4, 2.0)
    pace.reported(1, 0.0, 50, 4, 2.2)  # its socket overflowed since
    assert pace.current < 1e6 and pace.backoffs == 1
    for t in range(1, 40):
        pace.tick(2.2 + t * 0.1)
    assert pace.current == 1e6
