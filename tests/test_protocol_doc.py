"""docs/protocol.md is the contract: every message type, op kind, client request and upward call the
code names is in its index (§0), so is every typed body, request and reply (``messages.Body`` and the
other msgspec Structs of gproc), and its version is the code's."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import msgspec

import gproc
from gproc import wire

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "gproc"


def _code() -> str:
    return "\n".join(p.read_text() for p in sorted(SRC.rglob("*.py")))


def _index() -> str:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    return doc[doc.index("## 0. Message index") : doc.index("## 1. ")]


def _named(pattern: str, text: str) -> set[str]:
    return set(re.findall(pattern, text))


def names_in_code() -> dict[str, set[str]]:
    """What the code sends, dispatches on or registers, read from its literals."""
    code = _code()
    requests: set[str] = set()
    for args in re.findall(r"requests\.update\(([^)]*)\)", code):
        requests |= _named(r"(\w+)=ClientRequest", args)
    calls = _named(r'calls\["([\w.]+)"\]', code) | _named(r'call_up\(\s*"([\w.]+)"', code)
    for args in re.findall(r"calls\.update\(([^)]*)\)", code):
        calls |= _named(r'"([\w.]+)":', args)
    # services that declare themselves in one table (``ops={...}``, ``requests={...}``, a ``calls``
    # dict ...): the keys of those dict literals
    table: dict[str, set[str]] = {"ops": set(), "requests": set(), "calls": set(), "down": set(), "up": set()}
    for what, body in re.findall(r"\b(ops|requests|calls|down|up)\b(?:: [^=\n]*)?\s*=\s*\{([^{}]*)\}", code):
        table[what] |= _named(r'"([\w.]+)"\s*:', body)
    return {
        "message types": _named(r'"t": "(\w+)"', code)
        | _named(r't == "(\w+)"', code)
        | _named(r'_messages\["(\w+)"\]', code)
        | table["down"]
        | table["up"],
        "op kinds": _named(r'handlers\["(\w+)"\]', code)
        | _named(r'\("(\w+)", self\._\w+\),', (SRC / "services" / "procs.py").read_text())
        | _named(r'start_op\([^,]+, "(\w+)"', code)
        | table["ops"],
        "client requests": requests | table["requests"] | _named(r"\b(\w+)=ClientRequest\(", code),
        "upward calls": calls | table["calls"],
    }


def test_the_code_is_read() -> None:
    # the patterns above must keep finding what is known to be there, or the check below is vacuous
    found = names_in_code()
    assert {"hello", "op", "rep", "in", "inack", "want"} <= found["message types"]
    assert {"noop", "exec", "have", "put", "pidstat"} <= found["op kinds"]
    assert {"info", "exec", "jobs", "ps", "allocate"} <= found["client requests"]
    assert {"attach", "blocks", "relay.open"} <= found["upward calls"]


def test_every_name_the_code_uses_is_in_the_index() -> None:
    index = _index()
    missing = {what: sorted(n for n in names if f"`{n}`" not in index) for what, names in names_in_code().items()}
    assert not any(missing.values()), f"not in docs/protocol.md §0: {missing}"


def message_types() -> set[type]:
    """Every msgspec Struct gproc defines (op bodies, client requests, reply rows), every module imported."""
    for mod in pkgutil.walk_packages(gproc.__path__, "gproc."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    out: set[type] = set()
    todo: list[type] = [msgspec.Struct]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("gproc."):
                out.add(sub)
    return out


def test_every_message_type_is_in_the_index() -> None:
    types = message_types()
    assert {"ExecBody", "ExecRequest", "PsRow", "KillBody", "Selected"} <= {t.__name__ for t in types}
    index = _index()
    missing = sorted(t.__name__ for t in types if f"`{t.__name__}`" not in index)
    assert not missing, f"types not in docs/protocol.md §0: {missing}"


def test_the_document_speaks_the_code_s_version() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    v = wire.PROTOCOL_VERSION
    assert doc.splitlines()[0].endswith(f"version {v}")
    assert f'"v": {v},' in doc
    assert not re.search(rf'"v": (?!{v}\b)\d+', doc)
