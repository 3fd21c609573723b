"""The postfix (bootstrap) expression evaluator. Allowed: ExpressionError."""

from __future__ import annotations

from common import text

from gproc import postfix
from gproc.errors import ExpressionError


def one(data: bytes) -> None:
    try:
        out = postfix.evaluate(text(data), hostname="n17")
    except ExpressionError:
        return
    assert isinstance(out, str) and out
