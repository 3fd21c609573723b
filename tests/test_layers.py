"""The package's layers import only downwards and no module imports itself round a circle.

wire and pure logic -> overlay -> services -> master/daemon -> client -> front ends. Every import
counts: at module level, under ``TYPE_CHECKING`` and inside functions (a circle held together by
imports inside functions is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "gproc"

# (layer, module names or prefixes ending in "."), lowest first
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "wire",
        (
            "errors", "ranks", "groups", "merge", "reduce", "wire", "messages", "address", "credential", "platform",
            "spawnd", "peers", "calltree", "certs", "runtime", "blocks", "multicast", "mcastnet", "libdw",
            "pids", "nodespec", "postfix", "store", "privateview", "state", "elf", "bundle", "psview", "filefacts",
            "eventloop",
        ),
    ),
    ("overlay", ("overlay",)),
    ("services", ("services", "services.")),
    ("master/daemon", ("master", "daemon", "daemonconfig", "config", "launchagent", "slurmagent")),
    ("client", ("client", "local", "launch", "slurmlaunch", "display", "__init__")),
    ("front ends", ("cli", "interactive", "__main__", "switches", "modes", "modes.", "web.", "web", "fs", "fs.")),
]  # fmt: skip


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """``gproc.x.y`` -> the module ``x.y`` (or its package), ``gproc`` -> ``__init__``."""
    if name == "gproc":
        return "__init__"
    if not name.startswith("gproc."):
        return None
    name = name[len("gproc.") :]
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, known: dict[str, Path], me: str | None = None) -> set[str]:
    """Every gproc module ``path`` (the module ``me``) imports, wherever the import statement is."""
    me = module_name(path) if me is None else me
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(["gproc", *base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            # "from gproc import wire" imports the module gproc.wire; "from gproc import X" else the package
            names = [f"{mod}.{a.name}" if resolve(f"{mod}.{a.name}", known) not in (None, "__init__") else mod
                     for a in node.names]  # fmt: skip
        else:
            continue
        for n in names:
            r = resolve(n, known)
            if r is not None and r != me:
                out.add(r)
    return out


def layer_of(mod: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        for m in members:
            if mod == m or (m.endswith(".") and mod.startswith(m)):
                return i
    raise AssertionError(f"module gproc.{mod} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) for m, p in known.items()}


def test_every_module_has_a_layer() -> None:
    for m in modules():
        layer_of(m)


def test_layers_import_only_downwards() -> None:
    wrong = [
        f"gproc.{m} ({LAYERS[layer_of(m)][0]}) imports gproc.{d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not wrong, "\n".join(wrong)


def find_circle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state and (c := visit(d)) is not None:
                return c
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)) is not None:
            return c
    return None


def test_no_import_circle() -> None:
    circle = find_circle(graph())
    assert circle is None, " -> ".join(circle or [])


def test_the_overlay_imports_no_service() -> None:
    assert not {d for d in graph()["overlay"] if d.startswith("services")}


@pytest.mark.parametrize(
    ("g", "circle"),
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]), ({"a": {"b"}, "b": set()}, None)],
)
def test_circles_are_found(g: dict[str, set[str]], circle: list[str] | None) -> None:
    assert find_circle(g) == circle


def test_imports_inside_functions_and_type_checking_count(tmp_path: Path) -> None:
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gproc.master import Master\n"
    src += "def f():\n    from gproc import overlay\n"
    p = tmp_path / "x.py"
    p.write_text(src)
    known = {"master": SRC / "master.py", "overlay": SRC / "overlay.py", "x": p}
    assert imports(p, known, "x") == {"master", "overlay"}
