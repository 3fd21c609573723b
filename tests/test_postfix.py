"""Bootstrap expressions: every SPEC §4 reference vector, the error cases, and a no-crash property."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproc.errors import ExpressionError
from gproc.postfix import OPERATORS, evaluate

SPEC_VECTORS = [
    ("2 2 +", "4"),
    ("4 2 -", "2"),
    ("4 2 *", "8"),
    ("4 2 /", "2"),
    ("5 2 %", "1"),
    ("sb43 hostbase", "43"),
    ("sb43 hostbase dup 20 / swap 20 % dup ifelse", "3"),
    ("sb40 hostbase dup 20 / swap 20 % dup ifelse", "2"),
    ("2 4 swap /", "2"),
    ("0 1 1 ifelse", "1"),
    ("0 1 0 ifelse", "0"),
    ("str cat strcat", "strcat"),
    ("1 dup +", "2"),
    ("4095 4096 roundup", "4096"),
    ("4097 8192 roundup", "8192"),
]


@pytest.mark.parametrize(("expr", "expected"), SPEC_VECTORS)
def test_spec_reference_vectors(expr: str, expected: str) -> None:
    assert evaluate(expr, hostname="unused") == expected


def test_spec_vector_on_slave17() -> None:
    assert evaluate("slave hostname hostbase 4 % strcat", hostname="slave17") == "slave1"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("-7 2 /", "-3"),  # truncation toward zero, as in C
        ("-7 2 %", "-1"),
        ("7 -2 /", "-3"),
        ("7 -2 %", "1"),
        ("-7 -2 /", "3"),
        ("4096 4096 roundup", "4096"),
        ("0 4096 roundup", "0"),
        ("-5 4 roundup", "-4"),
        ("a b c 0 ifelse", "b"),  # cond 0 picks z; items below the top are ignored
        ("b a 1 ifelse", "a"),
        ("leftover 1 2", "2"),
        ("07", "07"),  # strings keep their spelling until used as numbers
        ("07 1 +", "8"),
        ("+5 -3 +", "2"),
        ("9223372036854775807", "9223372036854775807"),
        ("-9223372036854775807 1 -", "-9223372036854775808"),
        ("x y swap strcat", "yx"),
    ],
)
def test_semantics(expr: str, expected: str) -> None:
    assert evaluate(expr, hostname="h1") == expected


@pytest.mark.parametrize(
    ("host", "base"),
    [
        ("slave17", "17"),
        ("sb43.local", "43"),
        ("node-07", "07"),
        ("n_3", "3"),
        ("Rack.A-12.cluster.example.org", "12"),
        ("cn12-ib", "12"),
        ("42", "42"),
    ],
)
def test_hostbase(host: str, base: str) -> None:
    assert evaluate("hostname hostbase", hostname=host) == base


def test_hostname_defaults_to_this_machine() -> None:
    assert evaluate("hostname") == socket.gethostname()


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("+", "token 1 '+': stack is empty"),
        ("1 +", "token 2 '+': stack is empty"),
        ("dup", "token 1 'dup': stack is empty"),
        ("1 swap", "token 2 'swap'"),
        ("1 2 ifelse", "token 3 'ifelse'"),
        ("a 1 +", "token 3 '+': operand 'a' is not an integer"),
        ("1 2 x ifelse", "operand 'x' is not an integer"),
        ("1.5 1 +", "not an integer"),
        ("4 0 /", "token 3 '/': division by zero"),
        ("4 0 %", "token 3 '%': division by zero"),
        ("4 0 roundup", "positive multiple"),
        ("4 -2 roundup", "positive multiple"),
        ("9223372036854775807 1 +", "overflow"),
        ("-9223372036854775808 -1 /", "overflow"),
        ("9223372036854775808 0 +", "does not fit in 64 bits"),
        ("master hostbase", "token 2 'hostbase': host name 'master' has no digits"),
        ("hostbase", "stack is empty"),
    ],
)
def test_errors_name_expression_and_token(expr: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(expr, hostname="slave17")
    message = str(caught.value)
    assert fragment in message
    assert repr(expr) in message
    assert "\n" not in message


def test_empty_result_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="result is empty"):
        evaluate("hostname", hostname="")


@given(st.text())
def test_arbitrary_text_never_crashes(expr: str) -> None:
    try:
        assert isinstance(evaluate(expr, hostname="slave17"), str)
    except ExpressionError as error:
        assert "\n" not in str(error)


_TOKENS = st.one_of(
    st.sampled_from(sorted(OPERATORS)),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.integers(min_value=-5, max_value=5).map(str),
    st.sampled_from(["slave", "sb43", "node-07", "x", "0", "07", "-", "-0"]),
)


@given(st.lists(_TOKENS, max_size=12), st.sampled_from(["slave17", "master", "sb43.local", ""]))
def test_token_programs_return_str_or_expression_error(tokens: list[str], host: str) -> None:
    try:
        result = evaluate(" ".join(tokens), hostname=host)
    except ExpressionError:
        return
    assert isinstance(result, str) and result
