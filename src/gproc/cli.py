"""The ``gproc`` command: finds the mode, parses its switches (seed single-dash forms and GNU long
forms, before or after the mode) and runs it.

Each mode lives in ``gproc.modes`` with its own switches (``gproc MODE --help``); everything goes
through the Python API; errors become one line on stderr and an exit status, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gproc.errors import GprocError, UsageError
from gproc.modes import cluster, daemons, files, jobs, launch, mount, procs, stack, tree, watch
from gproc.modes import exec as exec_mode
from gproc.switches import CommandLine, Mode
from gproc.switches import split_argv as _split

MODE_TABLE: dict[str, Mode] = {
    name: mode
    for family in (daemons, exec_mode, jobs, tree, procs, stack, files, mount, watch, cluster, launch)
    for mode in family.MODES
    for name in mode.names
}


def usage() -> str:
    """The summary ``gproc -h`` prints: every mode in one line or two."""
    lines = ["usage: gproc MODE [switches] [args]     (gproc MODE --help: that mode's switches)"]
    for family in (daemons, exec_mode, jobs, tree, procs, stack, files, mount, watch, cluster, launch):
        for mode in family.MODES:
            lines.extend("  " + s for s in mode.summary)
    lines.append(
        "seed switches: -myParent -myId -myAddress -cmdport -defaultMasterUDS -binRoot -r -f -localbin -p -debug"
    )
    return "\n".join(lines) + "\n"


def split_argv(argv: Sequence[str]) -> CommandLine:
    """Split a command line into switches, mode and positionals (see ``gproc.switches.split_argv``)."""
    return _split(argv, MODE_TABLE)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gproc`` command."""
    try:
        line = split_argv(sys.argv[1:] if argv is None else argv)
        if line.mode is None:
            if "--version" in line.switches:
                from gproc import __version__

                print(f"gproc {__version__}")
                return 0
            wants_help = any(s in ("-h", "--help") for s in line.switches)
            print(usage(), end="", file=sys.stdout if wants_help else sys.stderr)
            return 0 if wants_help else 2
        opts = line.mode.parser.parse_args(line.switches)
        opts.verbatim = line.verbatim
        return int(line.mode.run(opts, line.pos))
    except GprocError as e:
        print(f"gproc: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("gproc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["MODE_TABLE", "UsageError", "main", "split_argv", "usage"]
