"""What checking an ``exec`` op body costs a node, four ways: the ``.get``/``isinstance`` checks the
handler made before bodies were typed, a dataclass built after those checks, ``msgspec.convert``
into the Struct gproc uses (``services.execute.ExecBody``) and into a dataclass; and an output
record's key, checked by hand or converted into an ``array_like`` Struct. Microseconds per body
(the best of 5 repeats), the environment of this process plus 40 variables as the body's ``env``.

    python bench/typed_decode.py
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gproc.services.execute import ExecBody


class Bad(Exception):
    pass


def by_hand(b: dict[str, Any]) -> tuple[Any, ...]:
    """The checks ``ExecService.run`` made before bodies were typed."""
    argv, cwd, env = b.get("argv"), b.get("cwd"), b.get("env")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise Bad
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise Bad
    uid, gid = b.get("uid"), b.get("gid")
    if not isinstance(uid, int) or not isinstance(gid, int):
        raise Bad
    job = b["job"] if isinstance(b.get("job"), int) else 0
    return argv, cwd, env, uid, gid, job


@dataclass(slots=True)
class ExecData:
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    job: int
    cwd: str | None = None
    timeout: float | None = None
    nnodes: int = 1
    gather: bool = False
    pgpid: int = 0
    stdin: bool = False
    redeliver: bool = False
    bundle: dict[str, Any] | None = None

    @staticmethod
    def decode(b: dict[str, Any]) -> ExecData:
        argv, env, uid, gid, job = b.get("argv"), b.get("env"), b.get("uid"), b.get("gid"), b.get("job")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise Bad
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise Bad
        nnodes, pgpid, timeout, cwd = b.get("nnodes", 1), b.get("pgpid", 0), b.get("timeout"), b.get("cwd")
        if not all(isinstance(x, int) for x in (uid, gid, job, nnodes, pgpid)):
            raise Bad
        if (cwd is not None and not isinstance(cwd, str)) or (
            timeout is not None and not isinstance(timeout, (int, float))
        ):
            raise Bad
        return ExecData(argv, env, uid, gid, job, cwd, timeout, nnodes, b.get("gather") is True, pgpid,  # type: ignore[arg-type]
                        b.get("stdin") is True, b.get("redeliver") is True, b.get("bundle"))  # fmt: skip


class Record(msgspec.Struct, array_like=True):
    tag: str
    stream: int
    line: int
    data: bytes


def record_by_hand(k: list[Any]) -> tuple[int, int, bytes]:
    if not (len(k) == 4 and k[0] == "o" and isinstance(k[1], int) and isinstance(k[2], int)):
        raise Bad
    if not isinstance(k[3], bytes):
        raise Bad
    return k[1], k[2], k[3]


def best(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    env = dict(os.environ) | {f"K{i}": "v" * 20 for i in range(40)}
    body = {"argv": ["/bin/true", "a", "b"], "env": env, "cwd": "/tmp", "uid": 0, "gid": 0, "timeout": None,
            "job": 123456, "nnodes": 256, "gather": False, "pgpid": 0, "stdin": False, "redeliver": True}  # fmt: skip
    print(f"exec body, {len(env)} environment variables:")
    cases: list[tuple[str, Callable[[], object]]] = [
        (".get/isinstance (before)", lambda: by_hand(body)),
        ("dataclass after the checks", lambda: ExecData.decode(body)),
        ("msgspec.convert -> Struct (gproc)", lambda: msgspec.convert(body, ExecBody)),
        ("msgspec.convert -> dataclass", lambda: msgspec.convert(body, ExecData)),
    ]
    for name, fn in cases:
        print(f"  {name:36s} {best(fn, 20_000):6.2f} us")
    rec = ["o", 1, 3, b"hello world\n"]
    print("output record key:")
    cases = [
        ("checks by hand", lambda: record_by_hand(rec)),
        ("msgspec.convert -> array_like Struct", lambda: msgspec.convert(rec, Record)),
    ]
    for name, fn in cases:
        print(f"  {name:36s} {best(fn, 200_000):6.3f} us")


if __name__ == "__main__":
    main()
