"""Node selection: seed tree paths on the seed's 64-slave tree, hostlists, and properties on random trees."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproc.errors import NodeSpecError, NoMatchError
from gproc.nodespec import TreePath, fold, match_names, match_tree, parse_tree_spec, select


class DictTree:
    """A test topology: node → [(id, child)]; nodes are their names."""

    def __init__(self, edges: dict[Hashable, list[tuple[str, Hashable]]]) -> None:
        self.edges = edges

    def children(self, node: Hashable) -> Iterable[tuple[str, Hashable]]:
        return self.edges.get(node, [])

    def all_nodes(self, root: Hashable = "master") -> set[Hashable]:
        found: set[Hashable] = set()
        stack = [root]
        while stack:
            for _, child in self.children(stack.pop()):
                found.add(child)
                stack.append(child)
        return found


def seed_tree() -> DictTree:
    """The seed README's cluster: slave0..3 under the master, slaveN under slave(N % 4), ids = N."""
    edges: dict[Hashable, list[tuple[str, Hashable]]] = {"master": []}
    for n in range(64):
        parent = "master" if n < 4 else f"slave{n % 4}"
        edges.setdefault(parent, []).append((str(n), f"slave{n}"))
    return DictTree(edges)


TREE = seed_tree()
ALL = {f"slave{n}" for n in range(64)}


def slaves(*numbers: int) -> set[str]:
    return {f"slave{n}" for n in numbers}


def match(spec: str) -> set[Hashable]:
    return match_tree(spec, TREE, "master")


# ---------------------------------------------------------------- tree paths on the seed tree


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("./.", ALL),
        ("1/.", slaves(1, *range(5, 64, 4))),
        (".", slaves(0, 1, 2, 3)),
        ("1-2", slaves(1, 2)),
        ("**", ALL),
        ("1/**", slaves(1, *range(5, 64, 4))),
        ("0,1/.", slaves(0, 1, *range(5, 64, 4))),
        ("1/5", slaves(1, 5)),
        ("1/5-13", slaves(1, 5, 9, 13)),
        ("./4", slaves(0, 1, 2, 3, 4)),
        ("0-3/60-63", slaves(0, 1, 2, 3, 60, 61, 62, 63)),
        ("01/05", slaves(1, 5)),  # numeric ids compare as numbers
        ("./**", ALL),
        ("1/5/**", slaves(1, 5)),
        ("1/.,1/**,**", ALL),
        (" 0 , 1 / 5 ", slaves(0, 1, 5)),
        ("9", set()),  # parses, names nothing at level 1
        ("1/4", slaves(1)),  # 4 is under slave0: the interior node is still selected
        ("./././.", ALL),
    ],
)
def test_seed_tree_paths(spec: str, expected: set[str]) -> None:
    assert match(spec) == expected


def test_counts_from_the_brief() -> None:
    assert [len(match(spec)) for spec in ["./.", "1/.", ".", "1-2", "**", "1/**", "0,1/."]] == [
        64,
        16,
        4,
        2,
        64,
        16,
        17,
    ]


def test_root_is_never_selected() -> None:
    assert "master" not in match("**")


def test_parsed_form_is_accepted() -> None:
    parsed = parse_tree_spec("1/.")
    assert all(isinstance(path, TreePath) for path in parsed)
    assert match_tree(parsed, TREE, "master") == match("1/.")


def test_zero_padded_ids() -> None:
    tree = DictTree({"m": [("05", "a"), ("07", "b"), ("10", "c"), ("x7", "d"), ("007", "e")], "b": [("rack_a", "f")]})
    assert match_tree("5-9", tree, "m") == {"a", "b", "e"}
    assert match_tree("7", tree, "m") == {"b", "e"}
    assert match_tree("07", tree, "m") == {"b", "e"}
    assert match_tree("x7", tree, "m") == {"d"}
    assert match_tree("7/rack_a", tree, "m") == {"b", "e", "f"}
    assert match_tree("0-100", tree, "m") == {"a", "b", "c", "e"}  # a non-numeric id is in no range


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("3-1", "descending range '3-1'"),
        ("1/9-2", "descending range '9-2'"),
        ("a-b", "range bounds must be numbers in 'a-b'"),
        ("1-b", "range bounds must be numbers"),
        ("1-", "range '1-' lacks a bound"),
        ("-1", "lacks a bound"),
        ("1-2-3", "bad element '1-2-3'"),
        ("1,,2", "empty element"),
        ("1//2", "empty element in '1//2'"),
        ("1/", "empty element"),
        ("/1", "empty element"),
        (",", "empty element"),
        ("1,", "empty element"),
        ("", "it is empty"),
        ("  ", "it is empty"),
        ("**/1", "'**' may only end a path"),
        ("1/**/**", "'**' may only end a path"),
        ("*", "bad element '*'"),
        ("1 2", "bad element '1 2'"),
        ("n[1-3]", "bad element 'n[1-3]'"),
        ("a.b", "bad element 'a.b'"),
        ("..", "bad element '..'"),
        ("é", "bad element"),
        ("٣", "bad element"),  # a non-ASCII digit is not an id
    ],
)
def test_tree_spec_errors(spec: str, fragment: str) -> None:
    with pytest.raises(NodeSpecError) as caught:
        parse_tree_spec(spec)
    message = str(caught.value)
    assert fragment in message
    assert message.startswith(f"bad node spec {spec!r}: ")


def test_match_tree_raises_on_bad_spec() -> None:
    with pytest.raises(NodeSpecError, match="descending"):
        match("3-1")


def test_wide_tree_is_fast() -> None:
    """10,000 nodes: 100 racks of 100; every spec shape answers without rescanning the tree per path."""
    edges: dict[Hashable, list[tuple[str, Hashable]]] = {
        "m": [(str(r), f"r{r}") for r in range(100)],
        **{f"r{r}": [(str(n), f"r{r}n{n}") for n in range(99)] for r in range(100)},
    }
    tree = DictTree(edges)
    assert len(match_tree("**", tree, "m")) == 100 * 100
    assert len(match_tree("./.", tree, "m")) == 100 * 100
    assert len(match_tree(",".join(f"{r}/**" for r in range(100)) + ",**", tree, "m")) == 100 * 100
    assert len(match_tree("3/10-19", tree, "m")) == 11


# ---------------------------------------------------------------- hostlists


NAMES = sorted(ALL)


def test_include_exclude() -> None:
    assert match_names("slave[0-3]", "slave2", NAMES) == (slaves(0, 1, 3), set())


def test_no_include_means_every_name() -> None:
    assert match_names(None, "slave[4-63]", NAMES) == (slaves(0, 1, 2, 3), set())
    assert match_names(None, None, NAMES) == (ALL, set())


def test_absent_names_are_reported() -> None:
    assert match_names("slave[62-65],n1", None, NAMES) == (slaves(62, 63), {"slave64", "slave65", "n1"})


def test_excluded_names_are_not_reported_absent() -> None:
    assert match_names("slave[62-65]", "slave65", NAMES) == (slaves(62, 63), {"slave64"})


def test_at_all_is_every_name() -> None:
    assert match_names("@all", None, NAMES) == (ALL, set())
    assert match_names("@all", "slave[1-63]", NAMES) == (slaves(0), set())
    assert match_names("@all!slave[1-63]", None, NAMES) == (slaves(0), set())
    assert match_names("@all", None, []) == (set(), set())


def test_clustershell_syntax() -> None:
    names = ["n1", "n2", "n3", "n4", "n7", "n01"]
    assert match_names("n[1-4,7]", None, names) == ({"n1", "n2", "n3", "n4", "n7"}, set())
    assert match_names("n[01-02]", None, names) == ({"n01"}, {"n02"})
    assert match_names("n[1-9]&n[3-4]", None, names) == ({"n3", "n4"}, set())


@pytest.mark.parametrize(
    ("include", "fragment"),
    [
        ("slave[", "missing bracket"),
        ("slave[3-1]", "bad range"),
        (",", "missing nodeset operand"),
        ("", "it is empty"),
        ("@racks", "unknown node group '@racks'"),
        ("@src:all", "unknown group source 'src'"),
        ("n[0-99999999]", "wider than"),
        # found by tests/fuzz: ClusterShell raised a bare ValueError, and never returned for the next
        ("[----]", "bad range in brackets"),
        ("n[-9501-]9", "bad range in brackets"),
        ("r[0-999]n[0-9999]", "wider than"),  # each range is narrow, together they are not
        ("n888[8-11848]", "wider than"),  # ClusterShell joins the 888 to both bounds: 88 million names
        ("4[1-50000000000000,4,./3-8[5]l", "brackets inside brackets"),  # ClusterShell asserted
        # a pattern is compiled once per name its brackets make: this one held the loop for 30 s
        ("**8[8-11848]", "may expand to at most"),
    ],
)
def test_hostlist_errors(include: str, fragment: str) -> None:
    with pytest.raises(NodeSpecError) as caught:
        match_names(include, None, NAMES)
    message = str(caught.value)
    assert fragment in message
    assert message.startswith(f"bad node set -w {include!r}: ")
    assert "\n" not in message


def test_exclude_errors_name_the_option() -> None:
    with pytest.raises(NodeSpecError, match=r"^bad node set -x 'slave\[': "):
        match_names(None, "slave[", NAMES)


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        (["slave0", "slave1", "slave2", "slave3", "slave5"], "slave[0-3,5]"),
        (["slave3", "slave1", "slave1"], "slave[1,3]"),
        (NAMES, "slave[0-63]"),
        (["n01", "n02", "login"], "login,n[01-02]"),
        ([], ""),
        (["bad[name"], "bad[name"),
    ],
)
def test_fold(names: list[str], folded: str) -> None:
    assert fold(names) == folded


# ---------------------------------------------------------------- select


def name_of(node: Hashable) -> str:
    return str(node)


def test_select_tree_spec_only() -> None:
    assert select("1/.", None, None, TREE, "master", name_of) == (match("1/."), set())


def test_select_names_only() -> None:
    assert select(None, "slave[0-3]", "slave2", TREE, "master", name_of) == (slaves(0, 1, 3), set())


def test_select_everything_by_default() -> None:
    assert select(None, None, None, TREE, "master", name_of) == (ALL, set())


def test_select_names_restrict_the_tree_spec() -> None:
    chosen, absent = select("1/.", "slave[1-9],slave99", "slave5", TREE, "master", name_of)
    # slave2..4,6..8 exist outside 1/. so only slave99 is absent
    assert (chosen, absent) == (slaves(1, 9), {"slave99"})


def test_select_no_match() -> None:
    with pytest.raises(NoMatchError, match=r"node spec '9' matched no node"):
        select("9", None, None, TREE, "master", name_of)
    with pytest.raises(NoMatchError, match=r"node spec '1/\. -w slave2' matched no node"):
        select("1/.", "slave2", None, TREE, "master", name_of)
    with pytest.raises(NoMatchError, match="matched no node"):
        select(None, None, None, DictTree({}), "master", name_of)


def test_select_bad_specs() -> None:
    with pytest.raises(NodeSpecError, match="descending"):
        select("3-1", None, None, TREE, "master", name_of)
    with pytest.raises(NodeSpecError, match="missing bracket"):
        select(None, "slave[", None, TREE, "master", name_of)


# ---------------------------------------------------------------- properties


@given(st.text())
def test_parse_arbitrary_text(spec: str) -> None:
    try:
        parse_tree_spec(spec)
    except NodeSpecError as error:
        assert "\n" not in str(error).replace(repr(spec), "")


@given(st.text(), st.one_of(st.none(), st.text()))
def test_match_names_arbitrary_text(include: str, exclude: str | None) -> None:
    try:
        selected, absent = match_names(include, exclude, NAMES)
    except NodeSpecError:
        return
    assert selected <= ALL
    assert not absent & ALL


_IDS = ["0", "1", "2", "3", "01", "10", "a", "b_2"]


@st.composite
def trees(draw: st.DrawFn) -> DictTree:
    """A random tree of up to 30 nodes (node 0 is the root), sibling ids unique."""
    size = draw(st.integers(min_value=1, max_value=30))
    edges: dict[Hashable, list[tuple[str, Hashable]]] = {}
    for node in range(1, size):
        parent = draw(st.integers(min_value=0, max_value=node - 1))
        taken = {child_id for child_id, _ in edges.get(parent, [])}
        free = [child_id for child_id in _IDS if child_id not in taken]
        if free:
            edges.setdefault(parent, []).append((draw(st.sampled_from(free)), node))
    return DictTree(edges)


_STEPS = st.one_of(
    st.just("."),
    st.sampled_from([*_IDS, "7", "010"]),
    st.tuples(st.integers(0, 12), st.integers(0, 12)).map(lambda r: f"{min(r)}-{max(r)}"),
)
_PATHS = st.tuples(st.lists(_STEPS, max_size=4), st.booleans()).map(
    lambda p: "/".join([*p[0], "**"] if p[1] else p[0]) or "**"
)
_SPECS = st.lists(_PATHS, min_size=1, max_size=3).map(",".join)


def _chain_matches(chain: list[str], steps: list[str]) -> bool:
    """Reference semantics, written independently: does each id of ``chain`` fit its step?"""
    for child_id, step in zip(chain, steps, strict=True):
        num = int(child_id) if child_id.isdigit() else None
        if step == ".":
            continue
        if "-" in step:
            lo, hi = map(int, step.split("-"))
            if num is None or not lo <= num <= hi:
                return False
        elif step != child_id and not (num is not None and step.isdigit() and int(step) == num):
            return False
    return True


def _reference(spec: str, tree: DictTree) -> set[Hashable]:
    """Every node whose id chain from the root is a prefix of a path (or lies under it with ``**``)."""
    chains: dict[Hashable, list[str]] = {}
    stack: list[tuple[Hashable, list[str]]] = [(0, [])]
    while stack:
        node, chain = stack.pop()
        for child_id, child in tree.children(node):
            chains[child] = [*chain, child_id]
            stack.append((child, chains[child]))
    selected = set()
    for path in spec.split(","):
        steps = path.split("/")
        subtree = steps[-1] == "**"
        if subtree:
            steps.pop()
        for node, chain in chains.items():
            on_path = len(chain) <= len(steps) and _chain_matches(chain, steps[: len(chain)])
            below = subtree and len(chain) > len(steps) and _chain_matches(chain[: len(steps)], steps)
            if on_path or below:
                selected.add(node)
    return selected


@given(trees(), _SPECS)
def test_matches_reference_semantics(tree: DictTree, spec: str) -> None:
    assert match_tree(spec, tree, 0) == _reference(spec, tree)


@given(trees(), _SPECS, _SPECS)
def test_comma_is_union(tree: DictTree, a: str, b: str) -> None:
    assert match_tree(f"{a},{b}", tree, 0) == match_tree(a, tree, 0) | match_tree(b, tree, 0)


@given(trees())
def test_double_star_is_every_node(tree: DictTree) -> None:
    assert match_tree("**", tree, 0) == tree.all_nodes(0)
    assert 0 not in match_tree("**", tree, 0)


@given(trees(), _SPECS)
def test_select_agrees_with_match_tree(tree: DictTree, spec: str) -> None:
    expected = match_tree(spec, tree, 0)
    if not expected:
        with pytest.raises(NoMatchError):
            select(spec, None, None, tree, 0, name_of)
    else:
        assert select(spec, None, None, tree, 0, name_of) == (expected, set())


def test_a_name_given_as_a_tree_path_hints_w() -> None:
    """pdsh and clush users write names where a tree path goes: the error says names go with -w."""
    with pytest.raises(NoMatchError, match=r"names go with -w: -w 'slave2' names slave2\)$"):
        select("slave2", None, None, TREE, "master", name_of)
    with pytest.raises(NodeSpecError, match=r"node names go with -w: -w 'slave\[1-3\]'$"):
        select("slave[1-3]", None, None, TREE, "master", name_of)
    with pytest.raises(NoMatchError) as caught:  # no node of that name either: no hint
        select("nobody", None, None, TREE, "master", name_of)
    assert "-w" not in str(caught.value)
    with pytest.raises(NodeSpecError) as bad:  # not a hostlist either
        select("3-1", None, None, TREE, "master", name_of)
    assert "-w" not in str(bad.value)


def test_a_tree_path_that_clustershell_cannot_read_is_one_error() -> None:
    """Found by tests/fuzz: deciding whether a bad tree path reads as names (for the -w hint) must
    neither let ClusterShell's bare ValueError out nor expand a range of a hundred billion names."""
    with pytest.raises(NodeSpecError) as bad:
        select("[----]", None, None, TREE, "master", name_of)
    assert "-w" not in str(bad.value)
    with pytest.raises(NodeSpecError, match=r"node names go with -w: -w 'n\[0-99999999999\]'$"):
        select("n[0-99999999999]", None, None, TREE, "master", name_of)
