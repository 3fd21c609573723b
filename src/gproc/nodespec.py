"""Selecting nodes (SPEC §3): seed tree paths (``1/.``, ``0-3/**``) and ClusterShell hostlists (-w/-x).

Tree paths::

    NODES ::= path ("," path)*
    path  ::= set ("/" set)* ["/" "**"] | "**"
    set   ::= "." | ID | ID "-" ID            ID ::= [A-Za-z0-9_]+ ; range bounds are decimal numbers

Every node named along a path is selected (``1/.`` is node 1 and its children); ``**`` is the whole
subtree under the path. Ids compare as numbers when both sides are decimal numbers (``7`` names ``07``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException
from ClusterShell.NodeUtils import (
    GroupResolver,
    GroupResolverError,
    GroupResolverSourceError,
    GroupSource,
    GroupSourceError,
)

from gproc.errors import NodeSpecError, NoMatchError

__all__ = [
    "MAX_GLOB_PATTERNS",
    "MAX_HOSTLIST_RANGE",
    "Step",
    "Tree",
    "TreePath",
    "fold",
    "match_names",
    "match_tree",
    "parse_tree_spec",
    "select",
]

_ID = re.compile(r"[A-Za-z0-9_]+")
_ID_RANGE = re.compile(r"([A-Za-z0-9_]*)-([A-Za-z0-9_]*)")
_NUMBER = re.compile(r"[0-9]+")
_BRACKETS = re.compile(r"\[([^][]*)\]")
_RANGE_ITEM = re.compile(r"\s*([0-9]+)(?:-([0-9]+))?(?:/[0-9]+)?\s*")
_LEAD_DIGITS = re.compile(r"[0-9]*$")
_TOP_COMMA = re.compile(r",(?![^[]*\])")
MAX_HOSTLIST_RANGE = 1_000_000
# ClusterShell matches a pattern with * or ? by compiling one regular expression per name its
# brackets expand to (1-3 ms each): node[1-20000]* would hold the master's loop for half a minute
MAX_GLOB_PATTERNS = 1_000
"""Most names a hostlist may expand to: ClusterShell expands ranges in memory."""


def _number(text: str) -> int | None:
    """``text`` as a non-negative decimal integer, or None (ASCII digits only)."""
    return int(text) if _NUMBER.fullmatch(text) else None


# ---------------------------------------------------------------- tree paths


@dataclass(frozen=True)
class Step:
    """One level of a path: every child (``.``), one id, or an inclusive numeric range ``lo-hi``."""

    text: str
    id: str | None = None
    lo: int | None = None
    hi: int | None = None

    def matches(self, child_id: str) -> bool:
        """Whether the child called ``child_id`` is named by this step."""
        if self.id is not None:
            mine, theirs = _number(self.id), _number(child_id)
            return self.id == child_id if mine is None or theirs is None else mine == theirs
        if self.lo is not None and self.hi is not None:
            value = _number(child_id)
            return value is not None and self.lo <= value <= self.hi
        return True


@dataclass(frozen=True)
class TreePath:
    """One ``,``-separated path: steps from the root, then optionally ``**`` (the whole subtree)."""

    steps: tuple[Step, ...]
    subtree: bool = False


class Tree(Protocol):
    """What matching needs from a topology: the ``(id, child)`` pairs under a node."""

    def children(self, node: Hashable) -> Iterable[tuple[str, Hashable]]: ...


def _parse_step(spec: str, text: str) -> Step:
    def bad(why: str) -> NodeSpecError:
        return NodeSpecError(f"bad node spec {spec!r}: {why}")

    if text == ".":
        return Step(text)
    if _ID.fullmatch(text):
        return Step(text, id=text)
    range_form = _ID_RANGE.fullmatch(text)
    if range_form:
        lo_text, hi_text = range_form.groups()
        if not lo_text or not hi_text:
            raise bad(f"range {text!r} lacks a bound")
        lo, hi = _number(lo_text), _number(hi_text)
        if lo is None or hi is None:
            raise bad(f"range bounds must be numbers in {text!r}")
        if lo > hi:
            raise bad(f"descending range {text!r}")
        return Step(text, lo=lo, hi=hi)
    if text == "**":
        raise bad("'**' may only end a path")
    raise bad(f"bad element {text!r} (expected '.', an id of letters, digits and '_', a range or '**')")


def parse_tree_spec(spec: str) -> list[TreePath]:
    """Parse a seed node spec such as ``0,1/.`` or ``3/**``. Raises NodeSpecError naming the bad part."""
    if not spec.strip():
        raise NodeSpecError(f"bad node spec {spec!r}: it is empty")
    paths = []
    for path_text in spec.split(","):
        elements = [element.strip() for element in path_text.split("/")]
        if "" in elements:
            raise NodeSpecError(f"bad node spec {spec!r}: empty element in {path_text.strip()!r}")
        subtree = elements[-1] == "**"
        if subtree:
            elements.pop()
        try:
            paths.append(TreePath(tuple(_parse_step(spec, element) for element in elements), subtree))
        except NodeSpecError as error:
            if _hostlist(spec):
                raise NodeSpecError(f"{error}; node names go with -w: -w {spec!r}") from None
            raise
    return paths


def _hostlist(spec: str) -> bool:
    """Does ``spec`` read as a ClusterShell node set of names (``node[0-7]``, ``web1,db2``)?"""
    if "[" not in spec or "/" in spec:
        return False
    size = _hostlist_size(spec)
    if size is None:
        return False
    if size > MAX_HOSTLIST_RANGE:
        return True  # names, but too many to expand just to say so
    try:
        NodeSet(spec, resolver=RESOLVER_NOGROUP)
    except (NodeSetException, ValueError, AssertionError):  # ClusterShell's own parser fails these ways
        return False
    return True


def _hostlist_size(spec: str) -> int | None:
    """At most how many names a hostlist expands to (None: a bracket holds something other than
    ``a``, ``a-b`` or ``a-b/step`` items), checked before ClusterShell expands it: its parser reads some
    malformed ranges as huge ones ('2[-9501-]9' does not return)."""
    total = 0
    if _unpaired(spec):
        return None
    for part in _TOP_COMMA.split(spec):
        size = 1
        for bracket in _BRACKETS.finditer(part):
            # digits just before a bracket join its bounds ('888[8-11848]' is 8888-88811848)
            lead = _LEAD_DIGITS.search(part, 0, bracket.start())[0]  # type: ignore[index]
            n = 0
            for item in bracket[1].split(","):
                m = _RANGE_ITEM.fullmatch(item)
                if m is None:
                    return None
                lo, hi = m[1].strip(), (m[2] or m[1]).strip()
                n += max(int(lead + hi) - int(lead + lo) + 1, 1)
            size *= n
        total += size
    return total


def _unpaired(spec: str) -> bool:
    """Brackets that do not pair up, or nest: ClusterShell's reading of those is not to be relied on."""
    outside = _BRACKETS.sub("", spec)
    return "[" in outside or "]" in outside


def _descendants(tree: Tree, roots: Iterable[Hashable], into: set[Hashable]) -> None:
    """Add every node strictly below ``roots`` to ``into`` (iterative DFS, skips subtrees already in)."""
    stack = list(roots)
    while stack:
        for _, child in tree.children(stack.pop()):
            if child not in into:
                into.add(child)
                stack.append(child)


def match_tree(spec: str | list[TreePath], tree: Tree, root: Hashable) -> set[Hashable]:
    """The nodes below ``root`` (the master, never selected itself) that a tree spec names."""
    paths = parse_tree_spec(spec) if isinstance(spec, str) else spec
    selected: set[Hashable] = set()
    subtree_roots: set[Hashable] = set()
    for path in paths:
        frontier: set[Hashable] = {root}
        for step in path.steps:
            frontier = {child for node in frontier for child_id, child in tree.children(node) if step.matches(child_id)}
            selected |= frontier
        if path.subtree:
            subtree_roots |= frontier
    # One walk for all the subtrees, so nested ones (``1/**,**``) visit each node once.
    walked: set[Hashable] = set()
    _descendants(tree, subtree_roots, walked)
    return selected | walked


# ---------------------------------------------------------------- hostlists


class _AllNames(GroupSource):
    """A group source knowing one group, ``@all``: the names given. Other groups are errors."""

    def resolv_map(self, group: str) -> list[str]:
        if group != "all":
            raise GroupSourceError(f"unknown node group '@{group}' (only @all is defined)", self)
        return list(self.groups["all"])


def _nodeset(spec: str, names: Iterable[str], option: str) -> NodeSet:
    """Parse a ClusterShell hostlist in which ``@all`` means ``names``; one-line NodeSpecError if bad."""

    def bad(why: str) -> NodeSpecError:
        return NodeSpecError(f"bad node set {option} {spec!r}: {' '.join(why.split())}")

    if not spec.strip():
        raise bad("it is empty")
    if _unpaired(spec):
        raise bad("missing bracket, or brackets inside brackets")
    size = _hostlist_size(spec)
    if size is None:
        raise bad("bad range in brackets (expected items such as 1, 3-7 or 0-10/2)")
    if size > MAX_HOSTLIST_RANGE:
        raise bad(f"its ranges are wider than {MAX_HOSTLIST_RANGE} names")
    if size > MAX_GLOB_PATTERNS and ("*" in spec or "?" in spec):
        raise bad(f"a pattern with * or ? may expand to at most {MAX_GLOB_PATTERNS} names")
    resolver = GroupResolver(_AllNames("gproc", {"all": names}, allgroups="all"))
    try:
        return NodeSet(spec, resolver=resolver)
    except GroupResolverSourceError as error:
        raise bad(f"unknown group source '{error}' (only @all is defined)") from None
    except (NodeSetException, GroupResolverError, GroupSourceError) as error:
        raise bad(str(error)) from None
    except (ValueError, AssertionError):  # ClusterShell's own parser fails these ways on some ranges
        raise bad("malformed range") from None


def match_names(include: str | None, exclude: str | None, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """Apply ``-w include`` / ``-x exclude`` to ``names``: (selected names present, requested but absent).

    ``include`` None means every name; excluded names are neither selected nor reported absent.
    """
    present = set(names)
    if include is None:
        selected, absent = set(present), set()
    else:
        requested = {str(name) for name in _nodeset(include, sorted(present), "-w")}
        selected, absent = requested & present, requested - present
    if exclude is not None:
        excluded = {str(name) for name in _nodeset(exclude, sorted(present), "-x")}
        selected -= excluded
        absent -= excluded
    return selected, absent


def fold(names: Iterable[str]) -> str:
    """Fold names into one ClusterShell nodeset string: ``slave0 slave1 slave3`` → ``slave[0-1,3]``."""
    names = sorted(set(names))
    try:
        return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    except NodeSetException:  # a name that is not a valid node name: list it as it is
        return ",".join(names)


# ---------------------------------------------------------------- both


def select(
    tree_spec: str | None,
    include: str | None,
    exclude: str | None,
    tree: Tree,
    root: Hashable,
    name_of: Callable[[Hashable], str],
) -> tuple[set[Hashable], set[str]]:
    """Combine a tree spec and ``-w``/``-x``: (selected nodes, names requested but absent from the tree).

    The tree spec (every node if None) is narrowed by ``-w`` and ``-x``. Raises NodeSpecError for a spec
    that does not parse and NoMatchError when nothing is selected.
    """
    everyone: set[Hashable] = set()
    if tree_spec is None or include is not None or exclude is not None:
        _descendants(tree, [root], everyone)
    candidates = everyone if tree_spec is None else match_tree(tree_spec, tree, root)
    absent: set[str] = set()
    if include is not None or exclude is not None:
        chosen, absent = match_names(include, exclude, (name_of(node) for node in everyone))
        candidates = {node for node in candidates if name_of(node) in chosen}
    if not candidates:
        label = " ".join(
            part
            for part in (
                tree_spec,
                None if include is None else f"-w {include}",
                None if exclude is None else f"-x {exclude}",
            )
            if part is not None
        )
        hint = _names_hint(tree_spec, tree, root, name_of) if include is None and exclude is None else ""
        raise NoMatchError(f"node spec {label or '@all'!r} matched no node{hint}")
    return candidates, absent


def _names_hint(tree_spec: str | None, tree: Tree, root: Hashable, name_of: Callable[[Hashable], str]) -> str:
    """When a tree path that selects nothing names nodes as a hostlist: say that names go with -w."""
    if not tree_spec:
        return ""
    everyone: set[Hashable] = set()
    _descendants(tree, [root], everyone)
    try:
        named, _ = match_names(tree_spec, None, (name_of(node) for node in everyone))
    except NodeSpecError:
        return ""
    if not named:
        return ""
    return f" (tree paths are of node ids; names go with -w: -w {tree_spec!r} names {fold(named)})"
