"""pdcp and ``clush --copy`` as peers on one machine: an sshd of the benchmark's own on loopback.

sshds (their own host and client keys, made here; one per ``PER_SSHD`` nodes, sshd's limit of
listening sockets) listen on one loopback address per node (127.1.X.Y, port ``PORT``);
``Match LocalAddress`` gives each address a forced command that enters
that node's directory before running what the client asked (pdcp's remote ``pdcp -z``, scp, or the
sftp server), so a relative destination lands in ``DIR/NODE/``: each node its own DEST, as ``%h``
gives gproc. It runs in a mount namespace of its own with a private ``/run`` (sshd's privilege
separation directory). ``stop`` kills them by their pids and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SSHD = "/usr/sbin/sshd"
SFTP = "/usr/lib/openssh/sftp-server"
PORT = 2222
PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS


def address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


class Peers:
    """ssh access to ``names``, each landing in ``dirs[name]``."""

    def __init__(self, names: list[str], dirs: dict[str, str]) -> None:
        if len(names) > 250 * 250:
            raise ValueError("too many nodes")
        self.names = names
        self.dirs = dirs
        self.dir = tempfile.mkdtemp(prefix="gbench-ssh-", dir="/tmp")
        self.sshds: list[subprocess.Popen[bytes]] = []

    @property
    def config(self) -> str:
        return os.path.join(self.dir, "ssh_config")

    def start(self, timeout: float = 30.0) -> Peers:
        for k in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.dir, k)],
                           check=True, capture_output=True, timeout=30)  # fmt: skip
        shutil.copy(os.path.join(self.dir, "client_key.pub"), os.path.join(self.dir, "authorized_keys"))
        enter = os.path.join(self.dir, "enter.sh")
        with open(enter, "w") as f:  # the forced command: the node's directory, then what was asked
            f.write('#!/bin/sh\ncd "$1" || exit 1\nexec /bin/sh -c "${SSH_ORIGINAL_COMMAND:-' + SFTP + '}"\n')
        os.chmod(enter, 0o755)
        common = (
            f"HostKey {self.dir}/host_key\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"UsePAM no\nStrictModes no\nLogLevel ERROR\nPrintMotd no\nMaxStartups 2000\nMaxSessions 100\n"
            f"Subsystem sftp {SFTP}\n"
        )
        with open(self.config, "w") as f:
            f.writelines(f"Host {n}\n  HostName {address(i)}\n" for i, n in enumerate(self.names))
            f.write(
                f"Host *\n  Port {PORT}\n  User root\n  IdentityFile {self.dir}/client_key\n  IdentitiesOnly yes\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n"
                "  BatchMode yes\n  ConnectTimeout 10\n  LogLevel ERROR\n"
            )
        try:
            for first in range(0, len(self.names), PER_SSHD):
                self._start_one(first, common, enter)
            deadline = time.monotonic() + timeout
            for first, sshd in zip(range(0, len(self.names), PER_SSHD), self.sshds, strict=True):
                self._wait(sshd, address(min(first + PER_SSHD, len(self.names)) - 1), deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, first: int, common: str, enter: str) -> None:
        mine = list(enumerate(self.names))[first : first + PER_SSHD]
        lines = [common, f"PidFile {self.dir}/sshd{first}.pid\n"]
        lines += [f"ListenAddress {address(i)}:{PORT}\n" for i, _n in mine]
        lines += [f"Match LocalAddress {address(i)}\n  ForceCommand {enter} {self.dirs[n]}\n" for i, n in mine]
        cfg = os.path.join(self.dir, f"sshd{first}.conf")
        with open(cfg, "w") as f:
            f.write("".join(lines))
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd && exec "$@"', "sh",
                SSHD, "-D", "-e", "-f", cfg]  # fmt: skip
        with open(os.path.join(self.dir, "sshd.log"), "ab") as log:
            sshd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.sshds.append(sshd)

    def _wait(self, sshd: subprocess.Popen[bytes], last: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if sshd.poll() is not None:
                with open(os.path.join(self.dir, "sshd.log"), errors="replace") as f:
                    raise RuntimeError(f"sshd exited: {f.read()[-2000:]}")
            try:
                with socket.create_connection((last, PORT), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd not listening in time")

    def env(self) -> dict[str, str]:
        """For pdsh/pdcp: ssh with this configuration."""
        return {**os.environ, "PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": f"-F {self.config}"}

    def stop(self) -> None:
        for sshd in self.sshds:
            if sshd.poll() is None:
                os.killpg(sshd.pid, signal.SIGTERM)
        for sshd in self.sshds:
            try:
                sshd.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(sshd.pid, signal.SIGKILL)
                sshd.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
