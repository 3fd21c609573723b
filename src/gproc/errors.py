"""One error hierarchy for gproc; the CLI turns each into one line and an exit status."""

from __future__ import annotations


class GprocError(Exception):
    """Base of every error gproc raises on purpose. ``exit_status`` is what the CLI exits with."""

    exit_status = 1


class UsageError(GprocError):
    """Bad command line or bad argument (exit 2)."""

    exit_status = 2


class NodeSpecError(UsageError):
    """A node selection (tree path or hostlist) that does not parse."""


class NoMatchError(GprocError):
    """A node selection that parsed but matched no node (exit 1)."""

    exit_status = 1


class ExpressionError(UsageError):
    """A bootstrap (postfix) expression that cannot be evaluated."""


class ProtocolError(GprocError):
    """A malformed frame, a wrong protocol version or an unexpected message."""


class AuthError(GprocError):
    """A peer that could not prove it holds the cluster credential."""


class IdentityRefused(AuthError):
    """A parent or the master refused this node's certificate (another node's, revoked): for good."""


class ConnectError(GprocError):
    """The master or a node could not be reached."""

    exit_status = 255


class RegistrationError(GprocError):
    """A node that its parent refused (duplicate id, bad hello)."""


class StagingError(GprocError):
    """A bundle that could not be built or staged (missing library, unsafe path)."""

    exit_status = 255


class RemoteError(GprocError):
    """An error reported by the master or a node for a request."""


class CommandNotFound(StagingError):
    """CMD is in no PATH directory, or its path names nothing (exit 127, as a shell)."""

    exit_status = 127


class CannotExecute(StagingError):
    """CMD exists but cannot run: a directory, no execute permission (exit 126, as a shell)."""

    exit_status = 126


def _kinds() -> dict[str, type[GprocError]]:
    out: dict[str, type[GprocError]] = {}
    todo: list[type[GprocError]] = [GprocError]
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def to_wire(e: GprocError) -> dict[str, object]:
    """An error as a reply carries it: its text, its kind (class name) and its exit status."""
    return {"msg": str(e)[:2000], "kind": type(e).__name__, "code": e.exit_status}


def from_wire(msg: dict[str, object], default: type[GprocError] = RemoteError) -> GprocError:
    """The error a reply carries, of the kind it was raised as (``default`` for a kind unknown here)."""
    cls = _kinds().get(str(msg.get("kind")), default)
    return cls(str(msg.get("msg", "error"))[:2000])


class NamespaceError(OSError):
    """A private mount namespace could not be set up (no privilege, or not supported here)."""
