"""Pure logic of ``gproc web``: the tree page's compact view and who is on loopback."""

from __future__ import annotations

from gproc.web.server import COMPACT_ABOVE, is_loopback, tree_view


def info(n: int, lost: set[int]) -> dict[str, object]:
    nodes = [
        {"name": f"node{i}", "rank": i + 1, "parent": "master" if i < 4 else f"node{(i - 4) // 4}",
         "level": 1 if i < 4 else 2, "state": "lost" if i in lost else "up", "id": str(i), "address": ""}
        for i in range(n)
    ]  # fmt: skip
    return {"master": "master", "nodes": nodes}


def test_few_nodes_are_listed_one_by_one() -> None:
    v = tree_view(info(16, {3}))
    assert (v["up"], v["lost"], v["total"]) == (15, 1, 16)
    assert [n["name"] for n in v["nodes"] if n["state"] == "lost"] == ["node3"] and "levels" not in v


def test_many_nodes_are_counted_per_level_with_the_lost_named() -> None:
    n = COMPACT_ABOVE * 4
    v = tree_view(info(n, {2, 700}))
    assert "nodes" not in v
    assert v["levels"] == [{"level": 1, "up": 3, "lost": 1}, {"level": 2, "up": n - 5, "lost": 1}]
    assert v["lost_nodes"] == ["node2", "node700"]


def test_loopback_is_127_8_and_the_ipv6_one() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("0.0.0.0") and not is_loopback("example.org")
