"""Build once, and cache, a small arm64 Debian root for the ``-r ROOT`` tests.

The root is unpacked with ``dpkg -x`` from packages fetched by ``apt-get download`` (the arm64
architecture is added to dpkg and ``apt-get update`` run only when needed). It lives under
``$GPROC_TEST_CACHE`` or ``~/.cache/gproc-test`` as ``arm64-root`` and is reused by later runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# What coreutils:arm64 (and its ``ls``) needs at run time, plus the C runtime.
PACKAGES = (
    "libc6",
    "libgcc-s1",
    "coreutils",
    "libselinux1",
    "libpcre2-8-0",
    "libacl1",
    "libattr1",
    "libgmp10",
    "libcap2",
)
ARCH = "arm64"


class ForeignRootUnavailable(RuntimeError):
    """The arm64 root could not be built here (no root, no network, no apt)."""


def cache_dir() -> Path:
    """The directory holding cached test fixtures."""
    env = os.environ.get("GPROC_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gproc-test"


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ForeignRootUnavailable(f"{' '.join(cmd)}: {exc}") from exc


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _ensure_arch() -> bool:
    """Make dpkg/apt know ARCH; returns True when apt-get update was just run."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ForeignRootUnavailable("apt-get/dpkg not available")
    foreign = _run(["dpkg", "--print-foreign-architectures"]).stdout.split()
    if ARCH in foreign:
        return False
    if os.geteuid() != 0:
        raise ForeignRootUnavailable(f"dpkg does not know {ARCH} and we are not root")
    proc = _run(["dpkg", "--add-architecture", ARCH])
    if proc.returncode != 0:
        raise ForeignRootUnavailable(f"dpkg --add-architecture {ARCH}: {_tail(proc)}")
    _update()
    return True


def _update() -> None:
    proc = _run(["apt-get", "update", "-q"], timeout=900)
    if proc.returncode != 0:
        raise ForeignRootUnavailable(f"apt-get update failed: {_tail(proc)}")


def _download(dest: str) -> list[str]:
    pkgs = [f"{p}:{ARCH}" for p in PACKAGES]
    proc = _run(["apt-get", "download", "-q", *pkgs], cwd=dest)
    if proc.returncode != 0:
        raise ForeignRootUnavailable(f"apt-get download failed: {_tail(proc)}")
    return sorted(str(p) for p in Path(dest).glob("*.deb"))


def _build(root: Path) -> None:
    just_updated = _ensure_arch()
    with tempfile.TemporaryDirectory(prefix="gproc-debs-") as debs:
        os.chmod(debs, 0o755)  # apt's _apt sandbox user must be able to write there
        try:
            files = _download(debs)
        except ForeignRootUnavailable:
            if just_updated or os.geteuid() != 0:
                raise
            _update()  # stale package lists: refresh once and retry
            files = _download(debs)
        tmp_root = Path(tempfile.mkdtemp(prefix="arm64-root.", dir=root.parent))
        try:
            for deb in files:
                proc = _run(["dpkg", "-x", deb, str(tmp_root)])
                if proc.returncode != 0:
                    raise ForeignRootUnavailable(f"dpkg -x {deb}: {_tail(proc)}")
            (tmp_root / ".complete").write_text("\n".join(os.path.basename(f) for f in files) + "\n")
            os.chmod(tmp_root, 0o755)
            os.rename(tmp_root, root)
        except BaseException:
            shutil.rmtree(tmp_root, ignore_errors=True)
            raise


def arm64_root() -> str:
    """Return the cached arm64 root, building it first if needed (raises ForeignRootUnavailable)."""
    root = cache_dir() / "arm64-root"
    if (root / ".complete").exists():
        return str(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "arm64-root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test processes build it once
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            _build(root)
    return str(root)


if __name__ == "__main__":
    print(arm64_root())
