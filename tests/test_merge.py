"""The tree's reply encoding (rank positions, near-identical lines as edits) is exact, so merging stays
associative: any tree shape, any arrival order and any split into partial replies give the groups that
merging everything flat at the master gives."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import merge
from gproc import ranks as rankset
from gproc.errors import ProtocolError
from gproc.groups import Groups, Key

# lines that share most of their bytes: a template with a few variable spots (a timestamp, a host name)
TEMPLATE = b"Linux node 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01) x86_64 GNU/Linux\n"
variants = st.builds(
    lambda cut, ins, short: short if short is not None else TEMPLATE[:cut] + ins + TEMPLATE[cut + len(ins) :],
    st.integers(0, len(TEMPLATE)),
    st.binary(max_size=6),
    st.one_of(st.none(), st.binary(max_size=12)),
)
keys = st.one_of(
    st.tuples(st.just("o"), st.integers(1, 2), st.integers(0, 2), variants),
    st.tuples(st.just("s"), st.sampled_from([0, 1, 255]), st.sampled_from(["", "lost"])),
)
# (node index, key) pairs: what each node of the tree produced
contributions = st.lists(st.tuples(st.integers(0, 39), keys), min_size=1, max_size=80)


def flat(items: list[tuple[int, Key]]) -> dict[Key, set[int]]:
    out: dict[Key, set[int]] = {}
    for r, k in items:
        out.setdefault(k, set()).add(r)
    return out


def wire_size(x: object) -> int:
    return len(msgpack.packb(x, use_bin_type=True))


@given(st.lists(st.tuples(keys, st.sets(st.integers(0, 60), min_size=1)), max_size=30), st.booleans())
def test_pack_unpack_round_trip(groups: list[tuple[Key, set[int]]], relative: bool) -> None:
    g = Groups()
    for k, rs in groups:
        g.add(k, rs)
    base = sorted(set().union(*(rs for _, rs in groups))) if relative and groups else None
    w = merge.pack(g, base)
    back = Groups()
    merge.unpack_into(back, msgpack.unpackb(msgpack.packb(w, use_bin_type=True), raw=False), base)
    assert back == g
    # an edit is used only when it is smaller
    assert wire_size(w) <= wire_size(merge.pack(g, base, edits=False))


def reduce_random_tree(items: list[tuple[int, Key]], rng: random.Random) -> Groups:
    """Each of 40 nodes gets a random parent with a lower index (0 is under the master); every node
    sends its subtree's results up in random partial replies, each encoded with rank positions in
    its subtree's targets and decoded by the parent with the same list."""
    n = 40
    parent = [-1] + [rng.randrange(i) for i in range(1, n)]
    subtree: list[set[int]] = [{i} for i in range(n)]
    for i in range(n - 1, 0, -1):
        subtree[parent[i]] |= subtree[i]
    own: list[Groups] = [Groups() for _ in range(n)]
    for r, k in items:
        own[r].add(k, {r})
    inbox: list[list[list[list[object]]]] = [[] for _ in range(n)]
    for i in range(n - 1, -1, -1):  # children before parents
        acc = Groups()
        acc.merge(own[i])
        rng.shuffle(inbox[i])
        for child, reply in inbox[i]:  # type: ignore[misc]
            merge.unpack_into(acc, reply, sorted(subtree[child]))
        if i == 0:
            return acc
        parts = list(acc.items())
        rng.shuffle(parts)
        cuts = sorted(rng.sample(range(len(parts) + 1), min(2, len(parts) + 1)))
        for a, b in zip([0, *cuts], [*cuts, len(parts)], strict=True):  # a few partial replies
            piece = Groups()
            for k, rs in parts[a:b]:
                piece.add(k, rs)
            if piece:
                reply = merge.pack(piece, sorted(subtree[i]))
                inbox[parent[i]].append([i, msgpack.unpackb(msgpack.packb(reply, use_bin_type=True), raw=False)])
    raise AssertionError("unreachable")


@settings(max_examples=200)
@given(contributions, st.integers(0, 2**32))
def test_any_tree_any_order_any_split_gives_flat_result(items: list[tuple[int, Key]], seed: int) -> None:
    result = reduce_random_tree(items, random.Random(seed))
    assert dict(result.items()) == flat(items)


def test_identical_output_costs_the_same_whatever_the_subtree_size() -> None:
    sizes = []
    for k in (1, 16, 1000, 100_000):
        g = Groups()
        g.add(("o", 1, 0, b"same\n"), range(5, 5 + 2 * k, 2))  # ranks far from contiguous
        g.add(("s", 0, ""), range(5, 5 + 2 * k, 2))
        sizes.append(wire_size(merge.pack(g, list(range(5, 5 + 2 * k, 2)))))
    assert len(set(sizes)) == 1


def test_near_identical_lines_travel_as_edits() -> None:
    g = Groups()
    for i in range(64):
        g.add(("o", 1, 0, TEMPLATE.replace(b"node", f"node{i}".encode())), {i})
    plain = wire_size(merge.pack(g, list(range(64)), edits=False))
    packed = merge.pack(g, list(range(64)))
    assert sum(1 for key, _ in packed if key[0] == "d") == 63
    assert wire_size(packed) * 4 < plain


def test_edit_is_exact_at_the_edges() -> None:
    for ref, data in [(b"abc", b"abc"), (b"abc", b""), (b"", b"xyz"), (b"aaaa", b"aa"), (b"aXa", b"aYYa")]:
        p, s = merge._common_prefix(ref, data), 0
        s = merge._common_suffix(ref, data, min(len(ref), len(data)) - p)
        assert merge.apply_edit(ref, p, s, data[p : len(data) - s]) == data


@pytest.mark.parametrize(
    "bad",
    [
        [[["d", 0, 0, 0, b"x"], [0, 0]]],  # refers to itself
        [[["o", 1, 0, b"abc"], [0, 0]], [["d", 0, 2, 2, b""], [1, 1]]],  # prefix + suffix beyond the line
        [[["s", 0, ""], [0, 0]], [["d", 0, 0, 0, b""], [1, 1]]],  # refers to a status
        [[["o", 1, 0, b"abc"], [0, 0]], [["d", 0, 1], [1, 1]]],  # short edit
        [[["o", 1, 0, b"abc"], [0, 9]]],  # position beyond the targets
        [[["o", 1, 0, b"abc"], [1, 0]]],  # bad interval
        [[[], [0, 0]]],
        "nope",
    ],
)
def test_malformed_replies_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        merge.unpack_into(Groups(), bad, [10, 11, 12])


def test_positions_reject_ranks_outside_targets() -> None:
    with pytest.raises(ValueError):
        merge.positions({3, 99}, [1, 2, 3])
    assert merge.positions({2, 3}, [1, 2, 3]) == [1, 2]
    assert merge.positions({1, 3}, [1, 2, 3]) == [0, 0, 2, 2]
    assert merge.positions({1, 2, 3}, [1, 2, 3]) is True
    assert merge.ranks_at(True, [4, 9]) == {4, 9} and rankset.decode([0, 0]) == {0}
