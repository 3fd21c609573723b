"""Switch parsing shared by every mode of the ``gproc`` command (below ``cli`` and ``gproc.modes``).

Seed switches (``-myParent``, ``-binRoot`` …) and single-dash long forms (``-json``) become their GNU
long forms; each mode has its own parser (``Mode.parser``), so ``gproc MODE --help`` lists only that
mode's switches and a switch of another mode is refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NoReturn

from gproc.errors import UsageError

# seed switch -> long form; the seed's booleans take an optional "=value"
SEED = {
    "-myParent": "--parent", "-myId": "--id", "-myAddress": "--address", "-cmdport": "--port",
    "-defaultMasterUDS": "--socket", "-binRoot": "--bin-root", "-r": "--root", "-f": "--files",
    "-localbin": "--localbin", "-p": "--private", "-debug": "--debug",
}  # fmt: skip
SIGNAL_SWITCH = re.compile(r"^-(\d+|(SIG)?[A-Z][A-Z0-9]*)$")  # kill -9, kill -KILL, kill -SIGKILL


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line ``UsageError``s (exit 2), not argparse's exit.

    The namespace's ``given`` is the set of dests a switch on the command line set (so a configuration
    file fills only the others: a default and an absent switch look alike after parsing)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        opts, rest = super().parse_known_args(args, namespace)
        opts.given = self.given(list(sys.argv[1:] if args is None else args))
        return opts, rest

    def given(self, args: list[str]) -> set[str]:
        """The dests the switches in ``args`` set (a value switch's value is skipped, not read as one)."""
        out: set[str] = set()
        i = 0
        while i < len(args):
            name, eq, _ = args[i].partition("=")
            action = self._option_string_actions.get(name) if name.startswith("-") else None
            if action is not None:
                out.add(action.dest)
                if action.nargs is None and not eq:
                    i += 1
            i += 1
        return out


@dataclass(frozen=True)
class Mode:
    """One mode of the command: its names, its switches, and what runs it.

    ``run(opts, positionals)`` returns the exit status. ``command_after(switches)``, when set, is how
    many positionals come before a command that is taken verbatim (exec's NODES). ``signal_args``:
    ``-9``/``-KILL`` are positionals (kill), not switches. ``short``: this mode's own one-letter
    switches as (letter, long form) pairs, bundled or not (cp's ``-rp``, tail's ``-n K -f``); after the
    mode they shadow the seed's ``-r``/``-p``/``-f`` and other modes' ``-n``."""

    names: tuple[str, ...]
    summary: tuple[str, ...]
    build: Callable[[Parser], None]
    run: Callable[[argparse.Namespace, list[str]], int]
    usage: str = ""
    description: str = ""
    command_after: Callable[[list[str]], int] | None = None
    signal_args: bool = False
    epilog: str = ""
    short: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.names[0]

    @cached_property
    def parser(self) -> Parser:
        """This mode's parser (built once): ``gproc MODE --help`` prints its switches."""
        p = Parser(
            prog=f"gproc {self.name}",
            usage=self.usage or f"gproc {self.name} [switches]",
            description=self.description,
            epilog=self.epilog,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.build(p)
        return p

    @cached_property
    def value_switches(self) -> frozenset[str]:
        """Switches of this mode that take a value (the token after them is theirs)."""
        return frozenset(s for a in self.parser._actions if a.nargs is None for s in a.option_strings)


class JoinSets(argparse.Action):
    """``-w a -w b`` is ``-w a,b`` (a union, as clush and pdsh take repeated ``-w`` and ``-x``)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        old = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{old},{values}" if old else values)


def size(v: str) -> int:
    """A byte count: ``1048576``, ``512K``, ``100M``, ``2G``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = v.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {v!r}") from None


def boolean(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on", "t"):
        return True
    if v.lower() in ("0", "false", "no", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {v!r}")


def add_socket(p: Parser) -> None:
    p.add_argument(
        "--socket", metavar="PATH", help="the master's socket (-defaultMasterUDS; default $GPROC_MASTER or /tmp/g)"
    )


def add_json(p: Parser, what: str = "one JSON object per line") -> None:
    p.add_argument("--json", action="store_true", help=what)


def add_selection(p: Parser, path: bool = True) -> None:
    """-w/-x (ClusterShell node sets; repeated ones accumulate) and --path (a tree path)."""
    p.add_argument("-w", dest="include", action=JoinSets, metavar="NODESET", help="these nodes (repeatable)")
    p.add_argument("-x", dest="exclude", action=JoinSets, metavar="NODESET", help="not these nodes (repeatable)")
    if path:
        p.add_argument("--path", metavar="SPEC", help="a tree path (as NODES), with -w/-x")


def add_debug(p: Parser) -> None:
    p.add_argument("--debug", type=int, default=0, metavar="N", help="-debug: 0 warnings, 1-4 information, 5-10 all")


def add_key(p: Parser) -> None:
    p.add_argument("--key", metavar="FILE", help="the cluster credential (default ~/.config/gproc/cluster.key)")


def add_identity(p: Parser) -> None:
    p.add_argument(
        "--cert",
        metavar="FILE",
        help="this daemon's certificate (gproc keygen --node NAME): per-node identity; --key is then its key"
        " (default NAME.key beside it)",
    )
    p.add_argument("--ca", metavar="FILE", help="the cluster CA's certificate, with --cert (default ca.crt beside it)")


def add_liveness(p: Parser) -> None:
    p.add_argument("--heartbeat", type=float, metavar="S", help="seconds between heartbeats")
    p.add_argument("--dead-after", type=float, metavar="S", help="a silent link is lost after S seconds")


def normalize(tok: str) -> str:
    """A seed switch or a single-dash long form as its GNU long form (``-myId=3`` -> ``--id=3``)."""
    name, eq, val = tok.partition("=")
    long = SEED.get(name)
    if long is None and name.startswith("-") and not name.startswith("--") and len(name) > 2:
        long = "-" + name  # single-dash long forms: -json, -key …
    return (long + eq + val) if long else tok


@dataclass
class CommandLine:
    """A command line split: the mode's switches, the mode, its positionals; ``verbatim``: a ``--``
    came before the command (exec then never wraps it in ``sh -c``)."""

    switches: list[str]
    mode: Mode | None
    pos: list[str]
    verbatim: bool = False


def _own_switches(mode: Mode, tok: str) -> list[str]:
    """The long forms of ``tok`` when it is one or more of ``mode``'s own one-letter switches."""
    letters = dict(mode.short)
    if not letters or len(tok) < 2 or tok[0] != "-" or not all(c in letters for c in tok[1:]):
        return []
    return [letters[c] for c in tok[1:]]


def split_argv(argv: Sequence[str], modes: dict[str, Mode]) -> CommandLine:
    """Split into switches, mode and positionals. Switches may come before or after the mode (as the
    seed's did); for exec everything from the command on is the command's own and is left untouched."""
    all_values: frozenset[str] | None = None  # of every mode: built (every parser) only when needed
    line = CommandLine([], None, [])
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        mode = line.mode
        if tok == "--":
            line.pos.extend(args[i + 1 :])
            line.verbatim = True
            break
        if mode is not None and mode.signal_args and SIGNAL_SWITCH.match(tok):
            line.pos.append(tok)  # kill's signal, not a gproc switch
        elif mode is not None and (own := _own_switches(mode, tok)):
            line.switches.extend(own)
            if own[-1] in mode.value_switches:
                if i + 1 >= len(args):
                    raise UsageError(f"{tok} needs a value")
                line.switches.append(args[i + 1])
                i += 1
        elif tok.startswith("-") and len(tok) > 1:
            norm = normalize(tok)
            name = norm.partition("=")[0]
            line.switches.append(norm)
            if mode is None:  # a switch before the mode: any mode's value switch takes the next token
                if all_values is None:
                    all_values = frozenset().union(*(m.value_switches for m in modes.values()))
                takes_value = name in all_values
            else:
                takes_value = name in mode.value_switches
            if "=" not in norm and takes_value:
                if i + 1 >= len(args):
                    raise UsageError(f"{tok} needs a value")
                line.switches.append(args[i + 1])
                i += 1
        elif mode is None:
            line.mode = modes.get(tok)
            if line.mode is None:
                raise UsageError(f"unknown mode {tok!r} (try 'gproc -h')")
        elif mode.command_after is not None and len(line.pos) >= mode.command_after(line.switches):
            line.pos.extend(args[i:])  # the command and its arguments, verbatim
            break
        else:
            line.pos.append(tok)
        i += 1
    return line
