"""Block signatures and deltas for ``gproc sync``: pure logic, no I/O.

A file of ``size`` bytes is cut in fixed blocks of ``block_size(size)`` (at most ``MAX_BLOCKS``
blocks, never smaller than ``MIN_BLOCK``); a block's hash is its SHA-256 (hex, as the store names
content) and its signature the first ``SIG_BYTES`` of that digest. A node holding an old version
sends up the signatures of its blocks cut at the *new* size's block size; the sender keeps the new
file's block hashes. A new block whose signature is among the old version's blocks need not travel
(wherever it lies in the old file: moved blocks are found too); the others do, each as a piece of
content named by its hash, or the whole file when more than half of it changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MIN_BLOCK = 128 * 1024  # one data frame down the tree (bundle.CHUNK)
MAX_BLOCKS = 1024  # so a file's signatures stay small (16 KiB) and a node opens few store pieces
SIG_BYTES = 16


def block_size(size: int) -> int:
    """The block size for a file of ``size`` bytes: a power of two, at least ``MIN_BLOCK``."""
    b = MIN_BLOCK
    while b * MAX_BLOCKS < size:
        b *= 2
    return b


def block_count(size: int) -> int:
    b = block_size(size)
    return (size + b - 1) // b


def block_hashes(data_blocks: Iterable[bytes]) -> list[str]:
    return [hashlib.sha256(b).hexdigest() for b in data_blocks]


def sig(block_hash: str) -> bytes:
    """A block's signature from its hash (hex SHA-256)."""
    return bytes.fromhex(block_hash)[:SIG_BYTES]


def signatures(data_blocks: Iterable[bytes]) -> bytes:
    """The signatures of blocks, concatenated (what a node sends up for its old version)."""
    return b"".join(hashlib.sha256(b).digest()[:SIG_BYTES] for b in data_blocks)


def split_sigs(sigs: bytes) -> list[bytes]:
    return [sigs[i : i + SIG_BYTES] for i in range(0, len(sigs), SIG_BYTES)]


def missing(new_blocks: list[str], old_sigs: bytes) -> list[int]:
    """Indices of the new file's blocks that the old version does not hold anywhere."""
    have = set(split_sigs(old_sigs))
    return [i for i, h in enumerate(new_blocks) if sig(h) not in have]


def send_whole(new_blocks: list[str], old_sigs: bytes | None) -> bool:
    """Ship the whole file rather than its missing blocks: no old version, or most of it changed."""
    if old_sigs is None:
        return True
    return 2 * len(missing(new_blocks, old_sigs)) > len(new_blocks)


def plan(new_blocks: list[str], size: int, old_sigs: bytes) -> list[tuple[str, int | str, int]]:
    """How a node builds the new file from its old version and received blocks, as runs in order:
    ``("o", old_offset, length)`` (copy from the old file) or ``("s", block_hash, length)`` (a
    received piece); consecutive old blocks that were consecutive in the old file make one run."""
    b = block_size(size)
    where: dict[bytes, int] = {}
    for i, s in enumerate(split_sigs(old_sigs)):
        where.setdefault(s, i * b)
    runs: list[tuple[str, int | str, int]] = []
    for i, h in enumerate(new_blocks):
        n = min(b, size - i * b)
        old = where.get(sig(h))
        if old is None:
            runs.append(("s", h, n))
            continue
        if runs and runs[-1][0] == "o":
            _k, start, length = runs[-1]
            assert isinstance(start, int)
            if start + length == old and length % b == 0:
                runs[-1] = ("o", start, length + n)
                continue
        runs.append(("o", old, n))
    return runs
