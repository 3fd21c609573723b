"""Every example in README.md runs as written, against a real local cluster the README itself starts.

The README is this test's input. Its convention (stated in the README's "Usage by example"):
- a ```sh block runs line by line in one bash session per block (variables set in one block are
  kept for the next), from a scratch directory, stdin from /dev/null unless the line pipes into it;
  each line must exit 0, or N when it carries ``# [exit N]``;
- a ```python block runs as a script with the environment the sh blocks built (GPROC_MASTER …);
- a ```text block right after a ```sh block is the output (stdout and stderr together) of that
  block's last line: each line equal, ``...`` inside a line standing for any text and a line that is
  only ``...`` for any number of lines;
- a line, or a block whose first line is a comment, marked ``[untested: REASON]`` is not run;
- other blocks (the set-up commands at the top, which install packages and run this very suite) are
  shown, not run.
Blocks run in README order; the quick start's ``gproc up`` makes the cluster, the README's
``gproc down`` stops it, and the teardown stops it anyway if a block failed before that line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gproc import local

README = Path(__file__).resolve().parent.parent / "README.md"
UNTESTED = re.compile(r"\[untested: [^\]]+\]")
EXIT = re.compile(r"#.*\[exit (\d+)\]")
BLOCK_TIMEOUT = 300.0


@dataclass
class Block:
    lang: str  # sh, python, text, or "" (shown only)
    line: int  # README line of the block's first line of content
    lines: list[str]
    output: list[str] | None = None  # the ```text block that follows a sh block
    untested: str | None = None  # the block's [untested: …] reason


@dataclass
class Command:
    text: str
    line: int
    status: int = 0


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, a text block attached to the sh block before it."""
    out: list[Block] = []
    cur: Block | None = None
    last_end = -1
    for i, ln in enumerate(text.splitlines(), 1):
        if cur is None:
            m = re.match(r"^```(\w*)\s*$", ln)
            if m:
                cur = Block(m.group(1), i + 1, [])
            continue
        if ln.startswith("```"):
            if cur.lang == "text" and out and out[-1].lang == "sh" and last_end == cur.line - 2:
                out[-1].output = cur.lines
            else:
                first = cur.lines[0] if cur.lines else ""
                reason = UNTESTED.search(first) if first.startswith("#") else None
                cur.untested = reason.group(0) if reason else None
                out.append(cur)
            last_end = i
            cur = None
            continue
        cur.lines.append(ln)
    if cur is not None:
        raise ValueError(f"README: the block opened at line {cur.line - 1} is never closed")
    return out


def commands(b: Block, untested: bool = False) -> list[Command]:
    """The runnable lines of a sh block (continuations joined), without comment lines and (unless
    ``untested``) without the lines marked untested."""
    out: list[Command] = []
    pending: Command | None = None
    for k, ln in enumerate(b.lines):
        if pending is not None:
            pending.text += "\n" + ln
        elif ln.strip() and not ln.lstrip().startswith("#"):
            pending = Command(ln, b.line + k)
        if pending is not None and not ln.endswith("\\"):
            if untested or not UNTESTED.search(pending.text):
                m = EXIT.search(pending.text)
                pending.status = int(m.group(1)) if m else 0
                out.append(pending)
            pending = None
    return out


def matches(expected: list[str], got: list[str]) -> bool:
    """``got`` line for line as ``expected``, with ``...`` for any text (a whole ``...`` line: any lines)."""
    if not expected:
        return not got
    head, rest = expected[0], expected[1:]
    if head == "...":
        return any(matches(rest, got[i:]) for i in range(len(got) + 1))
    if not got:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return re.fullmatch(pattern, got[0]) is not None and matches(rest, got[1:])


def script(b: Block, state: Path, outdir: Path) -> str:
    """A bash script that runs the block's commands one by one, recording each one's output and status,
    and stops at the first that exits with another status than the README says."""
    parts = [
        "set -a",  # every variable a line sets is exported, so the next block gets it
        f'[ -f "{state}" ] && source "{state}"',
    ]
    for c in commands(b):
        parts += [
            "{",
            c.text,
            f'}} >"{outdir}/{c.line}.out" 2>&1 </dev/null',
            f'__rc=$?; echo $__rc >"{outdir}/{c.line}.rc"',
            f'[ $__rc = {c.status} ] || {{ export -p >"{state}"; exit 0; }}',
        ]
    parts.append(f'export -p >"{state}"')
    return "\n".join(parts) + "\n"


@dataclass
class Session:
    """What the README's blocks share: a scratch directory, the shell state, whether one failed."""

    work: Path
    state: Path
    failed: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment the sh blocks exported so far."""
        env = dict(os.environ)
        if self.state.exists():
            for m in re.finditer(r'^declare -x (\w+)="(.*)"$', self.state.read_text(), re.M):
                env[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\$", "$").replace("\\\\", "\\")
        return env


README_BLOCKS = [b for b in blocks(README.read_text()) if b.lang in ("sh", "python")]


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    work = Path(tempfile.mkdtemp(prefix="gpt-readme-", dir="/tmp"))
    s = Session(work, work / ".state")
    os.mkdir(work / "run")
    os.mkdir(work / "tmp")  # the blocks' TMPDIR: what their `mktemp -d` makes goes with the session
    try:
        yield s
    finally:
        sock = s.env().get("GPROC_MASTER", "")
        if sock and sock != os.environ.get("GPROC_MASTER") and os.path.exists(sock):
            local.down(sock, quiet=True)  # the README's own `gproc down` did not run
        where = os.path.dirname(sock)
        if sock and re.fullmatch(re.escape(tempfile.gettempdir()) + r"/tmp\.\w+", where):  # `mktemp -d`
            shutil.rmtree(where, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _bin_path() -> str:
    """PATH with this Python's scripts first, so `gproc` and `python3` are the ones under test."""
    return os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.mark.cluster
@pytest.mark.parametrize("block", README_BLOCKS, ids=lambda b: f"{b.lang}@README:{b.line}")
def test_readme_block(block: Block, session: Session) -> None:
    if block.untested:
        pytest.skip(f"README line {block.line}: {block.untested}")
    if session.failed:
        pytest.skip(f"an earlier README block failed ({session.failed[0]})")
    env = {**session.env(), "PATH": _bin_path(), "TMPDIR": str(session.work / "tmp")}
    outdir = Path(tempfile.mkdtemp(dir=session.work / "run"))
    if block.lang == "python":
        code = session.work / f"readme_{block.line}.py"
        code.write_text("\n".join(block.lines) + "\n")
        r = subprocess.run(
            [sys.executable, str(code)], cwd=session.work, env=env, capture_output=True, text=True,
            timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if r.returncode != 0:
            session.failed.append(f"python block at line {block.line}")
        assert r.returncode == 0, f"README python block at line {block.line} exited {r.returncode}:\n{r.stderr}"
        return
    cmds = commands(block)
    sh = session.work / f"readme_{block.line}.sh"
    sh.write_text(script(block, session.state, outdir))
    subprocess.run(
        ["bash", str(sh)], cwd=session.work, env=env, timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL, check=True
    )
    for c in cmds:
        rc_file = outdir / f"{c.line}.rc"
        assert rc_file.exists(), f"README line {c.line} did not run (the block stopped before it)"
        rc = int(rc_file.read_text())
        out = (outdir / f"{c.line}.out").read_text()
        if rc != c.status:
            session.failed.append(f"line {c.line}")
        assert rc == c.status, f"README line {c.line} exited {rc}, not {c.status}: {c.text}\n{out}"
    if block.output is not None:
        last = cmds[-1]
        shown = commands(block, untested=True)[-1]
        assert last.line == shown.line, f"README line {shown.line}: output shown after an untested line"
        got = (outdir / f"{last.line}.out").read_text().splitlines()
        assert matches(block.output, got), (
            f"README line {last.line} ({last.text.strip()}) printed\n" + "\n".join(got)
            + "\nwhere the README shows\n" + "\n".join(block.output)
        )  # fmt: skip


# ---- the convention itself (pure logic) ---------------------------------------------------------


def test_blocks_commands_and_markers() -> None:
    md = (
        "text\n```sh\necho a   # [exit 3] why\n# a comment\nfalse # [untested: no]\necho b \\\n  c\n```\n"
        "```text\na\n```\n```python\nprint(1)\n```\n```\nshown only\n```\n"
        "```sh\n# [untested: elsewhere]\nls\n```\n"
    )
    got = blocks(md)
    assert [b.lang for b in got] == ["sh", "python", "", "sh"]
    assert got[0].output == ["a"] and got[0].line == 3
    assert [(c.text, c.line, c.status) for c in commands(got[0])] == [
        ("echo a   # [exit 3] why", 3, 3),
        ("echo b \\\n  c", 6, 0),
    ]
    assert got[1].output is None and got[3].untested == "[untested: elsewhere]" and got[0].untested is None


def test_output_matching() -> None:
    assert matches(["node[0-3]: Linux"], ["node[0-3]: Linux"])
    assert not matches(["node[0-3]: Linux"], ["node[0-2]: Linux"])
    assert not matches(["a"], ["a", "b"])
    assert matches(["x ... y"], ["x anything y"])
    assert not matches(["x ... y"], ["x anything z"])
    assert matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert matches(["a", "...", "z"], ["a", "z"])
    assert not matches(["a", "...", "z"], ["a", "b"])
    assert matches(["[.*]"], ["[.*]"])  # regex characters in the README are literal


def test_the_readme_has_examples_to_run() -> None:
    # the parser must keep finding the README's examples, or the tests above pass on nothing
    runnable = [b for b in README_BLOCKS if not b.untested]
    assert sum(len(commands(b)) for b in runnable if b.lang == "sh") >= 30
    assert any(b.lang == "python" for b in runnable)
    assert any(b.output for b in runnable)
    assert any("gproc up" in c.text for b in runnable if b.lang == "sh" for c in commands(b))
