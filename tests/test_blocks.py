"""Block signatures and deltas (gproc.blocks): a node rebuilds any new version exactly from its old
version and the blocks the sender found missing, and nothing it already holds is sent."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import blocks

B = blocks.MIN_BLOCK


def cut(data: bytes, size: int) -> list[bytes]:
    b = blocks.block_size(size)
    return [data[i : i + b] for i in range(0, len(data), b)]


def rebuild(old: bytes, new: bytes) -> tuple[bytes, int]:
    """``new`` as a node rebuilds it: old blocks by offset, the rest from what was sent; and how many
    bytes were sent."""
    new_blocks = blocks.block_hashes(cut(new, len(new)))
    old_sigs = blocks.signatures(cut(old, len(new)))
    sent = {new_blocks[i]: cut(new, len(new))[i] for i in blocks.missing(new_blocks, old_sigs)}
    out = bytearray()
    for kind, x, n in blocks.plan(new_blocks, len(new), old_sigs):
        if kind == "o":
            assert isinstance(x, int)
            out += old[x : x + n]
        else:
            assert isinstance(x, str)
            out += sent[x]
    return bytes(out), sum(len(v) for v in sent.values())


edits = st.lists(
    st.tuples(st.sampled_from(["write", "truncate", "append", "swap"]), st.integers(0, 6 * B), st.integers(1, B)),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 6 * B), changes=edits)
def test_any_new_version_is_rebuilt_exactly_from_the_old_and_the_missing_blocks(
    seed: int, size: int, changes: list[tuple[str, int, int]]
) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(size)
    new = bytearray(old)
    for kind, at, n in changes:
        at = min(at, len(new))
        if kind == "write":
            new[at : at + n] = rng.randbytes(len(new[at : at + n]))
        elif kind == "truncate":
            del new[at:]
        elif kind == "append":
            new += rng.randbytes(n)
        elif len(new) >= 2 * B:  # two aligned blocks change places: moved blocks are found, not sent
            i, j = 0, (len(new) // B - 1) * B
            new[i : i + B], new[j : j + B] = new[j : j + B], new[i : i + B]
    got, sent = rebuild(old, bytes(new))
    assert got == bytes(new)
    written = sum(min(n, len(new)) for kind, _a, n in changes if kind in ("write", "append"))
    assert sent <= len(new) and sent <= B * (2 * len(changes) + 1) + written


def test_an_unchanged_file_sends_nothing_and_a_changed_block_only_itself() -> None:
    data = random.Random(1).randbytes(10 * B + 5)
    assert rebuild(data, data) == (data, 0)
    changed = bytearray(data)
    changed[3 * B + 7] ^= 1
    got, sent = rebuild(data, bytes(changed))
    assert got == bytes(changed) and sent == B


def test_block_size_keeps_signatures_small() -> None:
    assert blocks.block_size(0) == blocks.block_size(B * blocks.MAX_BLOCKS) == B
    assert blocks.block_size(B * blocks.MAX_BLOCKS + 1) == 2 * B
    assert blocks.block_count(256 << 20) == blocks.MAX_BLOCKS
