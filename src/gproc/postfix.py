"""Bootstrap expressions (SPEC §4): the seed's small postfix language for -myParent, -myId, -myAddress.

``evaluate("slave hostname hostbase 4 % strcat", hostname="slave17")`` returns ``"slave1"``.
The stack holds strings; arithmetic reads its operands as 64-bit decimal integers and pushes the
result back as a decimal string, so a string such as ``07`` keeps its leading zero until used as a number.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from gproc.errors import ExpressionError

__all__ = ["OPERATORS", "evaluate"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
_HOST_DIGITS = re.compile(r"[A-Za-z._-]*([0-9]+)")


class _Fail(Exception):
    """Why the current token failed; ``evaluate`` adds the expression and the token."""


def _int(value: str) -> int:
    """Read a stack item as a 64-bit integer."""
    if not _INTEGER.fullmatch(value):
        raise _Fail(f"operand {value!r} is not an integer")
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise _Fail(f"operand {value!r} does not fit in 64 bits")
    return number


def _checked(number: int) -> str:
    if not INT64_MIN <= number <= INT64_MAX:
        raise _Fail("integer overflow (64 bits)")
    return str(number)


def _divide(y: int, x: int) -> int:
    """Quotient truncated toward zero, as in C and Go."""
    if x == 0:
        raise _Fail("division by zero")
    quotient = abs(y) // abs(x)
    return quotient if (y < 0) == (x < 0) else -quotient


def _modulo(y: int, x: int) -> int:
    """Remainder with the sign of the dividend, as in C and Go."""
    return y - _divide(y, x) * x


def _roundup(y: int, x: int) -> int:
    """``y`` rounded up to a multiple of ``x`` (``x`` must be positive)."""
    if x <= 0:
        raise _Fail(f"roundup needs a positive multiple, got {x}")
    return -(-y // x) * x


def _hostbase(host: str) -> str:
    """The digits of a host name: ``slave17`` → ``17``, ``sb43.local`` → ``43``, ``node-07`` → ``07``.

    Leading letters, ``.``, ``-`` and ``_`` are skipped; the run of digits that follows is kept and
    whatever comes after it (a domain suffix, ``-ib``) is dropped.
    """
    found = _HOST_DIGITS.match(host)
    if found is None:
        raise _Fail(f"host name {host!r} has no digits after its leading letters")
    return found.group(1)


_ARITHMETIC: dict[str, Callable[[int, int], int]] = {
    "+": lambda y, x: y + x,
    "-": lambda y, x: y - x,
    "*": lambda y, x: y * x,
    "/": _divide,
    "%": _modulo,
    "roundup": _roundup,
}

OPERATORS: frozenset[str] = frozenset([*_ARITHMETIC, "strcat", "dup", "swap", "ifelse", "hostname", "hostbase"])


def _step(stack: list[str], token: str, hostname: Callable[[], str]) -> None:
    """Apply one token to ``stack``."""

    def pop() -> str:
        if not stack:
            raise _Fail("stack is empty")
        return stack.pop()

    if token in _ARITHMETIC:
        x, y = pop(), pop()
        stack.append(_checked(_ARITHMETIC[token](_int(y), _int(x))))
    elif token == "strcat":
        x, y = pop(), pop()
        stack.append(y + x)
    elif token == "dup":
        x = pop()
        stack += [x, x]
    elif token == "swap":
        x, y = pop(), pop()
        stack += [x, y]
    elif token == "ifelse":
        x, y, z = pop(), pop(), pop()
        stack.append(y if _int(x) != 0 else z)
    elif token == "hostname":
        stack.append(hostname())
    elif token == "hostbase":
        stack.append(_hostbase(pop()))
    else:
        stack.append(token)


def evaluate(expr: str, hostname: str | None = None) -> str:
    """Run the postfix program ``expr`` on a fresh stack and return the top of stack.

    ``hostname`` is what the ``hostname`` operator pushes (default: this machine's host name).
    Items left below the top are ignored, as in the seed. Raises ExpressionError.
    """
    tokens = expr.split()
    if not tokens:
        raise ExpressionError(f"bad expression {expr!r}: it is empty")

    def host() -> str:
        return socket.gethostname() if hostname is None else hostname

    stack: list[str] = []
    for position, token in enumerate(tokens, 1):
        try:
            _step(stack, token, host)
        except _Fail as why:
            raise ExpressionError(f"bad expression {expr!r}: token {position} {token!r}: {why}") from None
    if not stack[-1]:
        raise ExpressionError(f"bad expression {expr!r}: the result is empty")
    return stack[-1]
